// The presence webhook's event, the contract between functions/presence-webhook and whoever
// sends it batches (the presence bridge, other backends, the benchmark).

/** One status report: `{"user_id","status","at","lat"?,"lng"?}`. */
export interface PresenceEvent {
  user_id: string;
  status: "online" | "offline";
  /** When it happened (RFC 3339, UTC). */
  at: string;
  lat?: number;
  lng?: number;
}

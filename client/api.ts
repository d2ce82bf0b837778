// Typed calls to the SLTR backend: the RPCs (PostgREST, `supabase.rpc`) and the edge functions
// (`supabase.functions.invoke`), with the signed-in user's JWT that supabase-js attaches.
// Every failure is an SltrApiError with the backend's error code.

import type { SupabaseClient } from "@supabase/supabase-js";
import type { Database } from "./database.types.ts";
import type { Location } from "./realtime.ts";

type Functions = Database["public"]["Functions"];

/** A user's online status (real time: events count before the flush). */
export interface OnlineStatus {
  user_id: string;
  is_online: boolean;
  last_seen_at: string | null;
}

/** Someone online nearby: a distance rounded to 100 m from their ~500 m cell, no coordinates;
 * null when they hide it (then ordered by the end of its 1 km band). */
export interface NearbyUser {
  user_id: string;
  display_name: string;
  distance_m: number | null;
  last_seen_at: string | null;
}

/** The signed-in user's safety settings (docs/privacy.md, "Safety controls"). */
export interface PrivacySettings {
  /** Appear offline to everyone. */
  incognito: boolean;
  /** False: others see no distance to this user. */
  show_distance: boolean;
}

export interface NearbyQuery {
  lat: number;
  lng: number;
  /** 1..50000, default 5000. */
  radiusM?: number;
}

export interface Answer<T> {
  users: T[];
  /** Served from the Redis cache. */
  cached: boolean;
  /** Redis was unavailable: answered from Postgres. */
  degraded: boolean;
}

/** Proof that the caller is who their presence says (functions/presence-ticket). */
export interface PresenceTicket {
  ticket: string;
  /** The presence topic to track on with it (absent from servers before topics: online-users). */
  topic?: string;
  expires_at: string;
  /** Lifetime in seconds, from issue. */
  expires_in: number;
}

export interface PresenceReceipt {
  accepted: number;
  ignored: number;
  degraded?: boolean;
}

/** `{ error: { code, message } }` from a function, or a PostgREST/Postgres error. */
export class SltrApiError extends Error {
  constructor(
    readonly code: string,
    message: string,
    /** The HTTP status, when there was an answer. */
    readonly status?: number,
  ) {
    super(message);
    this.name = "SltrApiError";
  }
}

interface PostgrestErrorLike {
  code?: string;
  message: string;
}

function rpcError(error: PostgrestErrorLike, status?: number): SltrApiError {
  return new SltrApiError(error.code || "rpc_error", error.message, status);
}

/** The error of a failed functions.invoke: its JSON body when the function answered. */
async function functionError(error: unknown): Promise<SltrApiError> {
  const context = (error as { context?: unknown })?.context;
  if (context instanceof Response) {
    try {
      const body = await context.clone().json() as { error?: { code?: string; message?: string } };
      if (body?.error?.code) {
        return new SltrApiError(body.error.code, body.error.message ?? "", context.status);
      }
    } catch { /* not JSON */ }
    return new SltrApiError("http_error", `HTTP ${context.status}`, context.status);
  }
  return new SltrApiError("network_error", (error as Error)?.message ?? String(error));
}

/** PostgREST's max_rows on the hosted project (supabase/config.toml [api] max_rows). */
export const MAX_ROWS = 1000;

export class SltrApi {
  constructor(private readonly supabase: SupabaseClient<Database>) {}

  /** RPC get_online_users_batch: the status of any number of users, one query per
   * MAX_ROWS ids (the API returns at most max_rows rows, and the RPC refuses longer lists);
   * the pages run side by side, each counting against the caller's quota. */
  async getOnlineUsersBatch(userIds: string[]): Promise<OnlineStatus[]> {
    const ids = [...new Set(userIds)];
    const pages: string[][] = [];
    for (let i = 0; i < ids.length; i += MAX_ROWS) pages.push(ids.slice(i, i + MAX_ROWS));
    if (ids.length === 0) return [];
    const answers = await Promise.all(pages.map(async (page) => {
      const args: Functions["get_online_users_batch"]["Args"] = { user_ids: page };
      const { data, error, status } = await this.supabase.rpc("get_online_users_batch", args);
      if (error) throw rpcError(error, status);
      return (data ?? []) as OnlineStatus[];
    }));
    return answers.flat();
  }

  /** RPC nearby_online_users: online users near a point, nearest first, never the caller. */
  async nearbyOnlineUsers(q: NearbyQuery & { maxResults?: number }): Promise<NearbyUser[]> {
    const args: Functions["nearby_online_users"]["Args"] = { lat: q.lat, lng: q.lng };
    if (q.radiusM !== undefined) args.radius_m = q.radiusM;
    if (q.maxResults !== undefined) args.max_results = q.maxResults;
    const { data, error, status } = await this.supabase.rpc("nearby_online_users", args);
    if (error) throw rpcError(error, status);
    return (data ?? []) as NearbyUser[];
  }

  /** RPC watch_presence: the users the caller's screens show now (replacing the previous
   * list, at most 1,000, for 10 minutes); returns how many users are watched in all. */
  async watchPresence(userIds: string[]): Promise<number> {
    const args: Functions["watch_presence"]["Args"] = { user_ids: userIds };
    const { data, error, status } = await this.supabase.rpc("watch_presence", args);
    if (error) throw rpcError(error, status);
    return data as number;
  }

  /** RPC block_user: neither sees the other anywhere; they leave each other's favorites and
   * watch lists. At most 10,000 (invalid_argument beyond). */
  async blockUser(userId: string): Promise<void> {
    const { error, status } = await this.supabase.rpc("block_user", { target: userId });
    if (error) throw rpcError(error, status);
  }

  /** RPC unblock_user. */
  async unblockUser(userId: string): Promise<void> {
    const { error, status } = await this.supabase.rpc("unblock_user", { target: userId });
    if (error) throw rpcError(error, status);
  }

  /** RPC list_blocks: the users the caller blocked. */
  async blockedIds(): Promise<string[]> {
    const { data, error, status } = await this.supabase.rpc("list_blocks");
    if (error) throw rpcError(error, status);
    return (data ?? []) as string[];
  }

  /** RPC set_privacy: changes the settings given, returns all of them. */
  async setPrivacy(settings: Partial<PrivacySettings>): Promise<PrivacySettings> {
    const { data, error, status } = await this.supabase.rpc("set_privacy", settings);
    if (error) throw rpcError(error, status);
    return data as unknown as PrivacySettings;
  }

  /** The signed-in user's favorites (the favorites table, their rows only by RLS). */
  async favoriteIds(): Promise<string[]> {
    const { data, error, status } = await this.supabase.from("favorites").select("favorite_id");
    if (error) throw rpcError(error, status);
    return (data ?? []).map((r) => r.favorite_id);
  }

  /** GET functions/v1/nearby-online: the same, through the Redis cache. */
  async nearbyOnline(q: NearbyQuery & { limit?: number }): Promise<Answer<NearbyUser>> {
    const params = new URLSearchParams({ lat: String(q.lat), lng: String(q.lng) });
    if (q.radiusM !== undefined) params.set("radius_m", String(q.radiusM));
    if (q.limit !== undefined) params.set("limit", String(q.limit));
    const { data, error } = await this.supabase.functions.invoke<Answer<NearbyUser>>(
      `nearby-online?${params}`,
      { method: "GET" },
    );
    if (error || !data) throw await functionError(error);
    return data;
  }

  /** POST functions/v1/online-status: the status of many users, cached. */
  async onlineStatus(userIds: string[]): Promise<Answer<OnlineStatus>> {
    const { data, error } = await this.supabase.functions.invoke<Answer<OnlineStatus>>(
      "online-status",
      { method: "POST", body: { user_ids: userIds } },
    );
    if (error || !data) throw await functionError(error);
    return data;
  }

  /** POST functions/v1/presence-ticket: a short-lived proof of identity for presence. */
  async presenceTicket(): Promise<PresenceTicket> {
    const { data, error } = await this.supabase.functions.invoke<PresenceTicket>(
      "presence-ticket",
      { method: "POST" },
    );
    if (error || !data) throw await functionError(error);
    return data;
  }

  /**
   * POST functions/v1/presence-webhook as the signed-in user: reports this user's own status
   * (for example when the app goes to the background), without Realtime.
   */
  async reportPresence(
    status: "online" | "offline",
    location?: Location | null,
    at: Date = new Date(),
  ): Promise<PresenceReceipt> {
    const event = { status, at: at.toISOString(), ...(location ?? {}) };
    const { data, error } = await this.supabase.functions.invoke<PresenceReceipt>(
      "presence-webhook",
      { method: "POST", body: { events: [event] } },
    );
    if (error || !data) throw await functionError(error);
    return data;
  }
}

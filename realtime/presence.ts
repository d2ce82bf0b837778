// Presence state per topic, as Phoenix.Presence keeps it on one node: for every key, one meta
// per channel that tracks it (several devices of one user share a key), each with an opaque
// phx_ref. A track adds a meta (a join), a new track from the same channel replaces its meta
// (a join with phx_ref_prev plus a leave of the old one), an untrack or the channel's end
// removes it (a leave). Each change is one diff, sent at once (no cluster, so no
// PRESENCE_BROADCAST_PERIOD batching).

export type Meta = Record<string, unknown> & { phx_ref: string; phx_ref_prev?: string };
export type Grouped = Record<string, { metas: Meta[] }>;
export interface Diff {
  joins: Grouped;
  leaves: Grouped;
}

let refCounter = 0;
const refPrefix = crypto.getRandomValues(new Uint32Array(1))[0].toString(36);

/** Unique, opaque, like Phoenix's base64 refs. */
function newRef(): string {
  return `F${refPrefix}${(++refCounter).toString(36)}`;
}

export class PresenceRegistry {
  /** topic → key → channel id → meta, in insertion order. */
  private readonly topics = new Map<string, Map<string, Map<number, Meta>>>();

  track(topic: string, key: string, channelId: number, payload: Record<string, unknown>): Diff {
    let keys = this.topics.get(topic);
    if (!keys) this.topics.set(topic, keys = new Map());
    let metas = keys.get(key);
    if (!metas) keys.set(key, metas = new Map());
    const old = metas.get(channelId);
    const meta: Meta = { ...payload, phx_ref: newRef() };
    if (old) meta.phx_ref_prev = old.phx_ref;
    metas.delete(channelId); // re-inserted last: the newest meta comes last
    metas.set(channelId, meta);
    return {
      joins: { [key]: { metas: [meta] } },
      leaves: old ? { [key]: { metas: [old] } } : {},
    };
  }

  untrack(topic: string, key: string, channelId: number): Diff | undefined {
    const keys = this.topics.get(topic);
    const metas = keys?.get(key);
    const old = metas?.get(channelId);
    if (!keys || !metas || !old) return undefined;
    metas.delete(channelId);
    if (metas.size === 0) keys.delete(key);
    if (keys.size === 0) this.topics.delete(topic);
    return { joins: {}, leaves: { [key]: { metas: [old] } } };
  }

  /** Phoenix.Presence.list, grouped by key: what presence_state carries. */
  state(topic: string): Grouped {
    const out: Grouped = {};
    for (const [key, metas] of this.topics.get(topic) ?? []) {
      out[key] = { metas: [...metas.values()] };
    }
    return out;
  }

  /** Metas tracked in all topics (for the metrics). */
  get size(): number {
    let n = 0;
    for (const keys of this.topics.values()) for (const metas of keys.values()) n += metas.size;
    return n;
  }
}

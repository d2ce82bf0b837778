// Redis is a cache, never the only copy: every call here fails fast and returns a
// "degraded" signal instead of throwing, so a Redis outage never becomes a 5xx.
import { Redis } from "ioredis";
import { env } from "./env.ts";
import { HttpError } from "./http.ts";

let client: Redis | undefined;

export function redis(): Redis | undefined {
  const url = env().redisUrl;
  if (!url) return undefined;
  if (!client) {
    client = new Redis(url, {
      lazyConnect: false,
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      connectTimeout: 500,
      commandTimeout: 250,
      retryStrategy: (times) => Math.min(times * 100, 1000),
    });
    // Reported per call as degraded. Added once: a listener per call leaked one per request
    // (MaxListenersExceededWarning under the fault tests).
    client.on("error", () => {});
  }
  return client;
}

export type Cached<T> = { ok: true; value: T } | { ok: false };

/**
 * Whether `r` can take a command now. A connection still opening (a cold process, a fresh
 * isolate) is waited for up to `timeoutMs`; one that is down and reconnecting is not, unless
 * `reconnecting` (background work that may wait out the reconnect's backoff, at most 1 s).
 */
export async function connected(
  r: Redis,
  timeoutMs = 500,
  { reconnecting = false } = {},
): Promise<boolean> {
  const opening = ["wait", "connecting", "connect"];
  if (opening.includes(r.status) || (reconnecting && r.status === "reconnecting")) {
    // A failed attempt closes the connection; waiting out reconnects, only the end stops it.
    const stop = reconnecting ? "end" : "close";
    await new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(timer);
        r.off("ready", done).off(stop, done);
        resolve();
      };
      const timer = setTimeout(done, timeoutMs);
      r.once("ready", done).once(stop, done);
    });
  }
  return r.status === "ready";
}

/** Runs a Redis operation; any failure of Redis (down, timeout) is `{ ok: false }`. An
 * HttpError the operation raises (a refusal it decided on) is the caller's answer: rethrown. */
export async function tryRedis<T>(op: (r: Redis) => Promise<T>): Promise<Cached<T>> {
  const r = redis();
  if (!r || !(await connected(r))) return { ok: false };
  try {
    return { ok: true, value: await op(r) };
  } catch (e) {
    if (e instanceof HttpError) throw e;
    return { ok: false };
  }
}

export function closeRedis(): void {
  client?.disconnect();
  client = undefined;
  writerClient?.disconnect();
  writerClient = undefined;
}

let writerClient: Redis | undefined;

/**
 * The write-through's own connection. Same fail-fast settings as the reads' (redis()) but a
 * 2 s command timeout instead of 250 ms: a read that gives up early falls back to Postgres, a
 * write that gives up early (a busy event loop is enough) may leave the index behind until the
 * minute's reconciliation.
 */
export function writer(): Redis | undefined {
  const url = env().redisUrl;
  if (!url) return undefined;
  if (!writerClient) {
    writerClient = new Redis(url, {
      lazyConnect: false,
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      connectTimeout: 500,
      commandTimeout: 2000,
      retryStrategy: (times) => Math.min(times * 100, 1000),
    });
    writerClient.on("error", () => {}); // reported per request as degraded
  }
  return writerClient;
}

/**
 * Runs a write on the writer connection; false when Redis is unavailable. A cold process (a
 * fresh isolate, a restart) has its connection still opening: that is waited for briefly
 * rather than skipping the write. An outage (reconnecting) is not waited for.
 */
export async function tryWrite(
  op: (r: Redis) => Promise<unknown>,
  timeoutMs = 500,
): Promise<boolean> {
  const r = writer();
  if (!r || !(await connected(r, timeoutMs))) return false;
  try {
    await op(r);
    return true;
  } catch {
    return false;
  }
}

const shas = new Map<string, string>();

/** A Lua script by its SHA (loaded on first use, or after Redis lost it): one round trip. */
export async function runScript(
  r: Redis,
  script: string,
  args: (string | number)[],
): Promise<unknown> {
  let sha = shas.get(script);
  if (!sha) {
    const digest = await crypto.subtle.digest("SHA-1", new TextEncoder().encode(script));
    sha = Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
    shas.set(script, sha);
  }
  try {
    return await r.evalsha(sha, 0, ...args);
  } catch (e) {
    if (!String((e as Error)?.message).startsWith("NOSCRIPT")) throw e;
    return await r.eval(script, 0, ...args);
  }
}

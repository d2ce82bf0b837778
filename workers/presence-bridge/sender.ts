// One signed POST of a batch to functions/presence-webhook, and what to do with its answer.
import { signBody } from "../../functions/_shared/auth.ts";
import type { PresenceEvent } from "../../functions/_shared/presence.ts";

/** What to do with a batch after one attempt. */
export type Outcome =
  | { kind: "sent"; accepted: number; ignored: number }
  /** Try the same events again later (after retryAfterMs when the server said so). */
  | { kind: "retry"; reason: string; retryAfterMs?: number }
  /** The webhook refuses this batch as a whole (400, 413): split it to find what it refuses. */
  | { kind: "split"; reason: string };

export interface SenderOptions {
  url: string;
  secret: string;
  fetch?: typeof fetch;
  nowMs?: () => number;
  timeoutMs?: number;
}

/** Parses Retry-After (seconds or an HTTP date) into milliseconds from now. */
export function retryAfterMs(value: string | null, nowMs: number): number | undefined {
  if (value === null) return undefined;
  const trimmed = value.trim();
  if (/^\d+$/.test(trimmed)) return Number(trimmed) * 1000;
  const date = Date.parse(trimmed);
  return Number.isNaN(date) ? undefined : Math.max(0, date - nowMs);
}

export class WebhookSender {
  private readonly fetch: typeof fetch;
  private readonly nowMs: () => number;

  constructor(private readonly options: SenderOptions) {
    this.fetch = options.fetch ?? fetch;
    this.nowMs = options.nowMs ?? Date.now;
  }

  /** One attempt. Signs at send time, so a retry is never refused as a stale signature. */
  async send(events: PresenceEvent[]): Promise<Outcome> {
    const body = JSON.stringify({ events });
    const header = await signBody(this.options.secret, body, Math.floor(this.nowMs() / 1000));
    let res: Response;
    try {
      res = await this.fetch(this.options.url, {
        method: "POST",
        headers: { "content-type": "application/json", "x-sltr-signature": header },
        body,
        signal: AbortSignal.timeout(this.options.timeoutMs ?? 10_000),
      });
    } catch (e) {
      return { kind: "retry", reason: `network: ${(e as Error)?.message ?? String(e)}` };
    }
    const text = await res.text().catch(() => "");
    if (res.status >= 200 && res.status < 300) {
      let result: { accepted?: unknown; ignored?: unknown } = {};
      try {
        result = JSON.parse(text);
      } catch { /* a 2xx is a 2xx */ }
      return {
        kind: "sent",
        accepted: typeof result.accepted === "number" ? result.accepted : events.length,
        ignored: typeof result.ignored === "number" ? result.ignored : 0,
      };
    }
    const reason = `${res.status} ${text.slice(0, 300)}`;
    // 400: something in the batch is refused; 413: too large. Retrying it whole cannot help.
    if (res.status === 400 || res.status === 413) return { kind: "split", reason };
    // Everything else is retried: 5xx/503 and 429 (with Retry-After), 408, and 401/403/404,
    // which are deployment problems (secret, clock, function not deployed) an operator fixes;
    // meanwhile nothing is dropped.
    return {
      kind: "retry",
      reason,
      retryAfterMs: retryAfterMs(res.headers.get("retry-after"), this.nowMs()),
    };
  }
}

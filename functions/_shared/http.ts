// HTTP helpers shared by every function: JSON answers, the one error shape, CORS, and the
// wrapper every handler goes through (metrics, structured logs, request ids, Sentry).
import { observeRequest } from "./metrics.ts";
import { inRequest } from "./request.ts";
import { captureError, recordTiming, type RequestTags, traceRequest } from "./sentry.ts";

export const corsHeaders: Record<string, string> = {
  "access-control-allow-origin": "*",
  "access-control-allow-headers":
    "authorization, x-client-info, apikey, content-type, x-sltr-signature",
  "access-control-allow-methods": "GET, POST, OPTIONS",
  "access-control-expose-headers": "x-request-id, retry-after",
};

export function json(body: unknown, status = 200, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json", ...corsHeaders, ...headers },
  });
}

/** `{ "error": { "code", "message" } }`, the only error shape clients ever see. */
export function error(
  code: string,
  message: string,
  status: number,
  headers: Record<string, string> = {},
): Response {
  return json({ error: { code, message } }, status, headers);
}

/** An error a handler throws to answer with a 4xx/5xx; anything else becomes a 500. */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

export function preflight(req: Request): Response | undefined {
  return req.method === "OPTIONS" ? new Response("ok", { headers: corsHeaders }) : undefined;
}

const METHODS = new Set(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]);

/** The method as metrics, logs and traces label it: a fixed set, so a client sending made-up
 * methods cannot create new series. */
export const methodLabel = (method: string) => METHODS.has(method) ? method : "OTHER";

export function requireMethod(req: Request, ...methods: string[]): void {
  if (!methods.includes(req.method)) {
    throw new HttpError(405, "method_not_allowed", `Use ${methods.join(" or ")}.`, {
      allow: methods.join(", "),
    });
  }
}

/** Reads a body up to `maxBytes`, refusing larger ones without buffering them whole. */
export async function readBody(req: Request, maxBytes: number): Promise<string> {
  const declared = Number(req.headers.get("content-length") ?? "0");
  if (declared > maxBytes) throw tooLarge(maxBytes);
  if (!req.body) return "";
  const reader = req.body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > maxBytes) {
      await reader.cancel();
      throw tooLarge(maxBytes);
    }
    chunks.push(value);
  }
  const bytes = new Uint8Array(size);
  let offset = 0;
  for (const c of chunks) {
    bytes.set(c, offset);
    offset += c.byteLength;
  }
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new HttpError(400, "invalid_body", "The body is not valid UTF-8.");
  }
}

function tooLarge(maxBytes: number): HttpError {
  return new HttpError(413, "payload_too_large", `The body exceeds ${maxBytes} bytes.`);
}

export function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    throw new HttpError(400, "invalid_json", "The body is not valid JSON.");
  }
}

const requestIdPattern = /^[A-Za-z0-9._:-]{1,128}$/;

/** The caller's request id (x-request-id, or Supabase's sb-request-id) if it is a sane token,
 * else a new uuid. Echoed in the `x-request-id` response header and every log line. */
export function requestIdOf(req: Request): string {
  for (const header of ["x-request-id", "sb-request-id"]) {
    const value = req.headers.get(header);
    if (value && requestIdPattern.test(value)) return value;
  }
  return crypto.randomUUID();
}

function withHeader(res: Response, name: string, value: string): Response {
  try {
    res.headers.set(name, value);
    return res;
  } catch {
    // Immutable headers (a Response from fetch or Response.redirect): copy it.
    const headers = new Headers(res.headers);
    headers.set(name, value);
    return new Response(res.body, { status: res.status, statusText: res.statusText, headers });
  }
}

/** Wraps a handler: CORS preflight, HttpError → its answer, anything else → 500. Every request
 * is measured (sltr_http_requests_total, sltr_http_request_duration_seconds), logged as one JSON
 * line (level, function, method, status, duration_ms, request_id), answered with its
 * `x-request-id`, and, when SENTRY_DSN is set, traced as a Sentry span with 500s captured. */
export function serveJson(
  name: string,
  fn: (req: Request) => Promise<Response>,
): (req: Request) => Promise<Response> {
  return (req) => inRequest(() => serve(req));
  async function serve(req: Request): Promise<Response> {
    const started = performance.now();
    const method = methodLabel(req.method);
    const tags: RequestTags = { function: name, method, requestId: requestIdOf(req) };
    let failure: string | undefined;
    const res = await traceRequest(tags, async () => {
      const pre = preflight(req);
      if (pre) return pre;
      try {
        return await fn(req);
      } catch (e) {
        if (e instanceof HttpError) {
          // 503 is expected unavailability (metrics and alerts show it); other 5xx are bugs
          // or misconfiguration (e.g. a missing secret) and go to Sentry like a crash.
          if (e.status >= 500 && e.status !== 503) {
            failure = `${e.code}: ${e.message}`;
            await captureError(tags, e);
          }
          return error(e.code, e.message, e.status, e.headers);
        }
        failure = String(e);
        await captureError(tags, e);
        return error("internal_error", "Something went wrong on our side.", 500);
      }
    });
    const ms = performance.now() - started;
    observeRequest(name, method, res.status, ms / 1000);
    await recordTiming(tags, res.status, ms);
    (res.status >= 500 ? console.error : console.log)(JSON.stringify({
      level: res.status >= 500 ? "error" : res.status >= 400 ? "warn" : "info",
      msg: "request",
      function: name,
      method,
      status: res.status,
      duration_ms: Math.round(ms * 100) / 100,
      request_id: tags.requestId,
      ...(failure ? { error: failure } : {}),
    }));
    return withHeader(res, "x-request-id", tags.requestId);
  }
}

// Sentry for every function, wired in the shared wrapper (http.ts serveJson): when SENTRY_DSN
// is set, unexpected errors are captured with the function name and request id as tags, and
// every request is a span ("http.server") plus a duration distribution metric. When it is not
// set, nothing is loaded or initialised: @sentry/deno is imported on first use only, so an
// unconfigured function pays nothing for it.
import type * as SentryNamespace from "@sentry/deno";
import { env } from "./env.ts";

export type SentryModule = typeof SentryNamespace;

let loading: Promise<SentryModule | undefined> | undefined;

function configured(): { dsn?: string; environment?: string; tracesSampleRate: number } {
  try {
    const e = env();
    return {
      dsn: e.sentryDsn,
      environment: e.sentryEnvironment,
      tracesSampleRate: e.sentryTracesSampleRate,
    };
  } catch {
    // Incomplete configuration fails the handler itself; Sentry stays off.
    return { tracesSampleRate: 0 };
  }
}

// The integrations worth having in a request handler. Left out on purpose: DenoServe (our
// wrapper makes the request span itself), Breadcrumbs (would record every JSON log line),
// GlobalHandlers (process-wide hooks), Dedupe (drops repeats of the same error, which
// hides error rates), ContextLines and the database/queue auto-instrumentations.
const integrationNames = new Set([
  "InboundFilters",
  "RequestData",
  "FunctionToString",
  "LinkedErrors",
  "DenoContext",
  "NormalizePaths",
]);

/** Sentry, loaded and initialised once if SENTRY_DSN is set; otherwise undefined. */
export function sentry(): Promise<SentryModule | undefined> {
  loading ??= (async () => {
    const { dsn, environment, tracesSampleRate } = configured();
    if (!dsn) return undefined;
    const Sentry = await import("@sentry/deno");
    Sentry.init({
      dsn,
      environment,
      tracesSampleRate: Number.isFinite(tracesSampleRate) ? tracesSampleRate : 0,
      sendDefaultPii: false,
      defaultIntegrations: false,
      integrations: Sentry.getDefaultIntegrations({}).filter((i) => integrationNames.has(i.name)),
    });
    return Sentry;
  })().catch((e) => {
    console.error(JSON.stringify({ level: "error", msg: "sentry init failed", error: String(e) }));
    return undefined;
  });
  return loading;
}

/** Whether Sentry has been initialised in this process (false while SENTRY_DSN is unset). */
export async function sentryActive(): Promise<boolean> {
  const Sentry = await sentry();
  return Sentry?.isInitialized() ?? false;
}

export interface RequestTags {
  function: string;
  requestId: string;
  method: string;
}

/** Runs one request inside an isolation scope and an http.server span (Sentry on), or as is. */
export async function traceRequest(
  tags: RequestTags,
  run: () => Promise<Response>,
): Promise<Response> {
  const Sentry = await sentry();
  if (!Sentry) return await run();
  return await Sentry.withIsolationScope(async (scope) => {
    scope.setTag("function", tags.function);
    scope.setTag("request_id", tags.requestId);
    return await Sentry.startSpan(
      {
        name: `${tags.method} /functions/v1/${tags.function}`,
        op: "http.server",
        forceTransaction: true,
        attributes: { "http.request.method": tags.method, "sltr.function": tags.function },
      },
      async (span) => {
        const res = await run();
        Sentry.setHttpStatus(span, res.status);
        return res;
      },
    );
  });
}

/** An unexpected error (a 500), tagged with the function and the request id. */
export async function captureError(tags: RequestTags, e: unknown): Promise<void> {
  const Sentry = await sentry();
  Sentry?.captureException(e, {
    tags: { function: tags.function, request_id: tags.requestId },
  });
}

/** The request's duration as a Sentry distribution metric (Sentry on only). */
export async function recordTiming(
  tags: RequestTags,
  status: number,
  durationMs: number,
): Promise<void> {
  const Sentry = await sentry();
  Sentry?.metrics.distribution("sltr.http.request.duration", durationMs, {
    unit: "millisecond",
    attributes: { function: tags.function, method: tags.method, status },
  });
}

/** Sends what is queued (tests, and before a worker exits). */
export async function flushSentry(timeoutMs = 2000): Promise<boolean> {
  const Sentry = await sentry();
  return (await Sentry?.flush(timeoutMs)) ?? true;
}

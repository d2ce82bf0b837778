// Run as a subprocess by monitoring.test.ts: one request through the shared wrapper to a
// handler that throws, then Sentry is flushed. Prints {"status", "sentry"} as one JSON line.
// Sentry is configured (or not) by this process's SENTRY_DSN, exactly as in a function.
import { serveJson } from "../../functions/_shared/http.ts";
import { flushSentry, sentryActive } from "../../functions/_shared/sentry.ts";

const handler = serveJson("sentry-probe", () => {
  throw new Error("sentry probe: a handler failed");
});
const res = await handler(
  new Request("http://127.0.0.1/functions/v1/sentry-probe", {
    headers: { "x-request-id": "sentry-probe-request" },
  }),
);
await res.body?.cancel();
await flushSentry(5000);
console.log(JSON.stringify({ status: res.status, sentry: await sentryActive() }));

// Servers a test or benchmark starts of its own, to kill or misconfigure: a functions server
// (functions/_serve/main.ts) and a presence bridge (workers/presence-bridge/main.ts), each its
// own process on a free port with the test's environment plus overrides.
import { ROOT, SERVICE_ROLE_KEY, WEBHOOK_SECRET } from "./env.ts";
import { freePort } from "./ports.ts";
import { eventually } from "./harness.ts";

/**
 * A private functions server (own process, own port, the test's environment plus `env`, or
 * `env` alone with `clearEnv`), to kill or misconfigure. Ready when `readyPath` answers at all: the default, `presence-webhook`
 * by GET, is refused (405) before any connection to Postgres or Redis is made, so the server's
 * first real request starts cold.
 */
export async function startFunctionsServer(
  env: Record<string, string>,
  readyPath = "presence-webhook",
  port = freePort(),
  opts: { clearEnv?: boolean } = {},
): Promise<{ url: string; child: Deno.ChildProcess }> {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-net",
      "--allow-env",
      "--allow-read",
      "--allow-sys",
      // A benchmark's CPU profile of the server (written when it stops: SIGTERM).
      ...(Deno.env.get("SLTR_SERVER_CPU_PROF_DIR")
        ? [`--cpu-prof-dir=${Deno.env.get("SLTR_SERVER_CPU_PROF_DIR")}`]
        : []),
      `${ROOT}/functions/_serve/main.ts`,
    ],
    cwd: ROOT,
    clearEnv: opts.clearEnv,
    env: { ...(opts.clearEnv ? {} : Deno.env.toObject()), FUNCTIONS_PORT: String(port), ...env },
    stdin: "null",
    stdout: Deno.env.get("SLTR_TEST_SERVER_LOGS") ? "inherit" : "null",
    stderr: Deno.env.get("SLTR_TEST_SERVER_LOGS") ? "inherit" : "null",
  }).spawn();
  const url = `http://127.0.0.1:${port}/functions/v1`;
  for (let i = 0;; i++) {
    try {
      await (await fetch(`${url}/${readyPath}`)).body?.cancel();
      return { url, child };
    } catch (e) {
      if (i > 150) throw e;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

/** A presence bridge process of its own, against `apiUrl` (a private server's). */
export async function startBridge(apiUrl: string, env: Record<string, string> = {}) {
  const port = freePort();
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-net", "--allow-env", `${ROOT}/workers/presence-bridge/main.ts`],
    env: {
      ...Deno.env.toObject(),
      SUPABASE_URL: apiUrl,
      SUPABASE_SERVICE_ROLE_KEY: SERVICE_ROLE_KEY,
      PRESENCE_WEBHOOK_SECRET: WEBHOOK_SECRET,
      BRIDGE_HEALTH_PORT: String(port),
      BRIDGE_HEALTH_HOST: "127.0.0.1",
      BRIDGE_STATS_INTERVAL_MS: "0",
      ...env,
    },
    stdin: "null",
    stdout: Deno.env.get("SLTR_TEST_SERVER_LOGS") ? "inherit" : "null",
    stderr: Deno.env.get("SLTR_TEST_SERVER_LOGS") ? "inherit" : "null",
  }).spawn();
  const health = `http://127.0.0.1:${port}/health`;
  await eventually(
    async () => {
      try {
        const res = await fetch(health);
        await res.body?.cancel();
        return res.status === 200;
      } catch {
        return false;
      }
    },
    "the private bridge joined",
    15_000,
  );
  return {
    health,
    stop: async () => {
      child.kill("SIGTERM");
      await child.status;
    },
    /** Gone at once, as a crashed host: nothing delivered, nobody left. */
    kill: async () => {
      try {
        child.kill("SIGKILL");
      } catch {
        // already gone
      }
      await child.status;
    },
  };
}

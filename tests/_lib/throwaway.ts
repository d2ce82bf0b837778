// A throwaway copy of the whole stack for tests that break things (tests/faults) or need a
// database nobody else writes to (tests/fuzz): scripts/stack.sh with its own state dir and
// free ports, so the shared stack (default ports, .state/) is never touched.
import assert from "node:assert/strict";
import postgres from "postgres";
import { signBody } from "../../functions/_shared/auth.ts";
import { POSTGRES_PASSWORD, ROOT, WEBHOOK_SECRET } from "./env.ts";
import { freePorts } from "./ports.ts";
import { sleep } from "./harness.ts";

export { ROOT, sleep };

/** application_name of the tests' direct (not pooled) connections. */
export const DIRECT_APP = "sltr-test-direct";

export interface Stack {
  env: Record<string, string>;
  state: string;
  url: string;
  dbUrl: string;
  poolerUrl: string;
  redisPort: number;
}

export async function run(
  cmd: string[],
  env: Record<string, string>,
  what: string,
): Promise<string> {
  const out = await new Deno.Command(cmd[0], {
    args: cmd.slice(1),
    env,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  assert.equal(out.code, 0, `${what} failed:\n${text}`);
  return text;
}

/** scripts/stack.sh with the throwaway stack's environment; daemons write to their logs, so
 * the script's own output goes to a file (a daemon keeping a pipe open would hang us). */
export async function stackSh(stack: Stack, action: string): Promise<void> {
  const log = `${stack.state}/stack-${action}.log`;
  await run(
    [
      "bash",
      "-c",
      `"$0" ${action} >>"$1" 2>&1 || { tail -30 "$1"; exit 1; }`,
      `${ROOT}/scripts/stack.sh`,
      log,
    ],
    stack.env,
    `stack.sh ${action}`,
  );
}

/** Starts a throwaway stack (~10 s: initdb, migrations, seed); `env` overrides settings of
 * supabase/local.env, e.g. POOL_MAX_SERVER_CONNECTIONS. */
export async function startStack(prefix: string, env: Record<string, string> = {}): Promise<Stack> {
  const state = await Deno.makeTempDir({ prefix });
  const [pg, bouncer, redis, fns, bridge, replica, realtime] = freePorts(7);
  await sleep(10);
  const stack: Stack = {
    env: {
      ...env,
      SLTR_STATE_DIR: state,
      PG_PORT: String(pg),
      REPLICA_PORT: String(replica),
      REALTIME_PORT: String(realtime),
      PGBOUNCER_PORT: String(bouncer),
      REDIS_PORT: String(redis),
      FUNCTIONS_PORT: String(fns),
      BRIDGE_HEALTH_PORT: String(bridge),
    },
    state,
    url: `http://127.0.0.1:${fns}/functions/v1`,
    dbUrl: `postgresql://postgres:${POSTGRES_PASSWORD}@127.0.0.1:${pg}/postgres`,
    poolerUrl: `postgresql://postgres:${POSTGRES_PASSWORD}@127.0.0.1:${bouncer}/postgres`,
    redisPort: redis,
  };
  try {
    await stackSh(stack, "start");
  } catch (e) {
    await stopStack(stack).catch(() => {});
    throw e;
  }
  return stack;
}

/** Stops it and removes its state dir (SLTR_KEEP_THROWAWAY=1 keeps the dir, logs included). */
export async function stopStack(stack: Stack): Promise<void> {
  try {
    await stackSh(stack, "stop");
  } finally {
    if (Deno.env.get("SLTR_KEEP_THROWAWAY") !== "1") {
      await Deno.remove(stack.state, { recursive: true }).catch(() => {});
    }
  }
}

/** A direct (not pooled) connection to the throwaway database. */
export function direct(stack: Stack): postgres.Sql {
  // fetch_types off: its unawaited query would be an unhandled rejection if Postgres is down.
  // (Pass arrays as literals then: uuidArray.)
  return postgres(stack.dbUrl, {
    max: 4,
    fetch_types: false,
    onnotice: () => {},
    connection: { application_name: DIRECT_APP },
  });
}

/** A uuid[] literal (direct() does not fetch array types). */
export const uuidArray = (ids: string[]) => `{${ids.join(",")}}`;

/** pg_ctl on the throwaway cluster, as the postgres system user when we are root. */
export async function pgCtl(stack: Stack, ...args: string[]): Promise<void> {
  const pgBin = Deno.env.get("PG_BIN") ?? "/usr/lib/postgresql/15/bin";
  const cmd = [`${pgBin}/pg_ctl`, "-D", `${stack.state}/pg`, ...args];
  const isRoot = Deno.uid() === 0;
  await run(isRoot ? ["runuser", "-u", "postgres", "--", ...cmd] : cmd, stack.env, "pg_ctl");
}

/** The distinct errors the throwaway functions server logged (for a failing test). */
export function serverErrors(stack: Stack): string {
  let text = "";
  try {
    text = Deno.readTextFileSync(`${stack.state}/log/functions.log`);
  } catch {
    return "(no log)";
  }
  const errors = new Set<string>();
  for (const line of text.split("\n")) {
    if (!line.includes('"error"') && !/error/i.test(line)) continue;
    try {
      const entry = JSON.parse(line);
      if (entry.error) errors.add(`${entry.function ?? entry.msg}: ${entry.error}`);
    } catch {
      errors.add(line.slice(0, 300));
    }
  }
  return [...errors].slice(-10).join("\n");
}

/** The presence webhook's x-sltr-signature for a body, with the stack's secret. */
export async function signature(
  body: string,
  t = Math.floor(Date.now() / 1000),
): Promise<string> {
  return await signBody(WEBHOOK_SECRET, body, t);
}

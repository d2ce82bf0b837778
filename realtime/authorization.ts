// Realtime Authorization: RLS on realtime.messages decides who may read and write a private
// channel, checked exactly as hosted Realtime checks it (supabase/realtime
// lib/realtime/tenants/authorization.ex):
//   read   one transaction: as the connecting (admin) role, insert one probe row per extension;
//          then switch to the JWT's role with its claims and realtime.topic() set; select the
//          probes back under RLS (visible = read granted); roll back, so no probe is kept.
//   write  one transaction: the settings, then per extension an insert inside a savepoint
//          (no RETURNING, so no select policy is needed): success = granted, 42501
//          insufficient_privilege = denied, anything else aborts; roll back.
// A role that does not exist or a policy that raises is an RlsPolicyError, which a join reports
// as "Unauthorized".
import postgres from "postgres";

export type Extension = "broadcast" | "presence";

export interface Grant {
  read?: boolean;
  write?: boolean;
}

/** `undefined` = not evaluated yet (hosted: nil). */
export interface Policies {
  broadcast: Grant;
  presence: Grant;
}

export const emptyPolicies = (): Policies => ({ broadcast: {}, presence: {} });

export interface AuthorizationContext {
  /** The sub-topic: the channel name without `realtime:`. */
  topic: string;
  claims: Record<string, unknown>;
  role: string;
  sub?: string;
  /** The x-* headers of the WebSocket upgrade (request.headers). */
  headers: Record<string, string>;
}

export class RlsPolicyError extends Error {}

/** Settings the policies see, all transaction-local (set_conn_config). */
async function applySettings(tx: postgres.TransactionSql, ctx: AuthorizationContext) {
  await tx`select set_config('role', ${ctx.role}, true),
                  set_config('realtime.topic', ${ctx.topic}, true),
                  set_config('request.jwt.claims', ${JSON.stringify(ctx.claims)}, true),
                  set_config('request.jwt.claim.sub', ${ctx.sub ?? ""}, true),
                  set_config('request.jwt.claim.role', ${ctx.role}, true),
                  set_config('request.headers', ${JSON.stringify(ctx.headers)}, true)`;
}

const ROLLBACK = Symbol("rollback");

export class Authorizer {
  /** Checks run, by kind, for the metrics. */
  readonly counts = { read: 0, write: 0, errors: 0 };

  constructor(private readonly sql: postgres.Sql) {}

  /** Read grants for broadcast, plus presence when `presence` is set. */
  async read(ctx: AuthorizationContext, policies: Policies, presence: boolean): Promise<Policies> {
    this.counts.read++;
    const probes: [Extension, string][] = [["broadcast", crypto.randomUUID()]];
    if (presence) probes.push(["presence", crypto.randomUUID()]);
    const visible = await this.rolledBack(async (tx) => {
      for (const [extension, id] of probes) {
        await tx`insert into realtime.messages (id, topic, extension)
                 values (${id}, ${ctx.topic}, ${extension})`;
      }
      await applySettings(tx, ctx);
      const rows = await tx`select id from realtime.messages
                            where id in ${tx(probes.map(([, id]) => id))}`;
      return new Set(rows.map((r) => r.id as string));
    });
    const next = structuredClone(policies);
    for (const [extension, id] of probes) next[extension].read = visible.has(id);
    return next;
  }

  /** Write grants for broadcast and, when `presence`, presence (else presence write = false,
   * as check_write_policies leaves an unchecked extension). */
  async write(ctx: AuthorizationContext, policies: Policies, presence = true): Promise<Policies> {
    this.counts.write++;
    const granted = await this.rolledBack(async (tx) => {
      await applySettings(tx, ctx);
      const result: Record<Extension, boolean> = { broadcast: false, presence: false };
      for (const extension of ["broadcast", "presence"] as const) {
        if (extension === "presence" && !presence) continue;
        try {
          await tx.savepoint((sp) =>
            sp`insert into realtime.messages (topic, extension) values (${ctx.topic}, ${extension})`
          );
          result[extension] = true;
        } catch (e) {
          if ((e as { code?: string }).code !== "42501") throw e;
        }
      }
      return result;
    });
    const next = structuredClone(policies);
    next.broadcast.write = granted.broadcast;
    next.presence.write = granted.presence;
    return next;
  }

  /** Runs `work` in a transaction that is always rolled back; Postgres errors become
   * RlsPolicyError, connection failures propagate. */
  private async rolledBack<T>(work: (tx: postgres.TransactionSql) => Promise<T>): Promise<T> {
    let result: T | undefined;
    try {
      await this.sql.begin(async (tx) => {
        result = await work(tx);
        throw ROLLBACK;
      });
    } catch (e) {
      if (e === ROLLBACK) return result as T;
      this.counts.errors++;
      if (e instanceof postgres.PostgresError) throw new RlsPolicyError(e.message);
      throw e;
    }
    return result as T;
  }
}

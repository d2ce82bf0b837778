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
//
// The checks share the tenant's "Database connection pool size" (db_pool, 1 by default), as on
// hosted: a check waits for a free connection, and one that waited twice db_queue_target is
// dropped (DBConnection's queue_target). Every drop counts toward authorization_errors (a 1 s
// RateCounter over 30 buckets, summed, limited to db_pool: tenants.ex
// authorization_errors_per_second_rate/1); while it is triggered every check is refused at
// once. Both are a PoolTimeoutError: the join's "IncreaseConnectionPool: Please increase your
// connection pool size" (realtime_channel.ex).
import postgres from "postgres";
import { RateCounter } from "./rate_counter.ts";

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

/** No connection of the pool in time, or too many such timeouts lately. */
export class PoolTimeoutError extends Error {}

/** A checkout queue of `size` connections; a waiter past `maxWaitMs` is dropped. */
class Checkout {
  private busy = 0;
  private readonly waiting: (() => void)[] = [];

  constructor(private readonly size: number, private readonly maxWaitMs: number) {}

  /** Resolves true with a connection held, false when the wait was too long. */
  acquire(): Promise<boolean> {
    if (this.busy < this.size) {
      this.busy++;
      return Promise.resolve(true);
    }
    return new Promise((resolve) => {
      const take = () => {
        clearTimeout(timer);
        resolve(true); // the releaser handed its connection over (busy unchanged)
      };
      const timer = setTimeout(() => {
        this.waiting.splice(this.waiting.indexOf(take), 1);
        resolve(false);
      }, this.maxWaitMs);
      this.waiting.push(take);
    });
  }

  release(): void {
    const next = this.waiting.shift();
    if (next) next();
    else this.busy--;
  }
}

/** Settings the policies see, all transaction-local (set_conn_config). A query not yet sent:
 * postgres.js sends a query when it is awaited, so the order of a pipeline is the order in
 * which its queries are awaited (Promise.all: the array's). */
function settings(tx: postgres.TransactionSql, ctx: AuthorizationContext) {
  return tx`select set_config('role', ${ctx.role}, true),
                  set_config('realtime.topic', ${ctx.topic}, true),
                  set_config('request.jwt.claims', ${JSON.stringify(ctx.claims)}, true),
                  set_config('request.jwt.claim.sub', ${ctx.sub ?? ""}, true),
                  set_config('request.jwt.claim.role', ${ctx.role}, true),
                  set_config('request.headers', ${JSON.stringify(ctx.headers)}, true)`;
}

const ROLLBACK = Symbol("rollback");

export class Authorizer {
  /** Checks run, by kind, for the metrics. */
  readonly counts = { read: 0, write: 0, errors: 0, poolTimeouts: 0 };
  /** authorization_errors: pool timeouts per 1 s tick, summed over 30 (the server ticks it). */
  readonly errors: RateCounter;
  private readonly checkout: Checkout;

  constructor(private readonly sql: postgres.Sql, poolSize = 1, queueTargetMs = 5000) {
    this.errors = new RateCounter(poolSize, 1000, 30, "sum");
    this.checkout = new Checkout(poolSize, 2 * queueTargetMs);
  }

  /** Read grants for broadcast, plus presence when `presence` is set. */
  async read(ctx: AuthorizationContext, policies: Policies, presence: boolean): Promise<Policies> {
    this.counts.read++;
    const probes: [Extension, string][] = [["broadcast", crypto.randomUUID()]];
    if (presence) probes.push(["presence", crypto.randomUUID()]);
    const visible = await this.rolledBack(async (tx) => {
      // One insert for every probe (Repo.insert_all_entries), then the settings and the select,
      // in that order, sent together (pipelined: one round trip, not three).
      const inserted = probes.map(([extension, id]) => ({ id, topic: ctx.topic, extension }));
      const [, , rows] = await Promise.all([
        tx`insert into realtime.messages ${tx(inserted, "id", "topic", "extension")}`,
        settings(tx, ctx),
        tx`select id from realtime.messages where id in ${tx(probes.map(([, id]) => id))}`,
      ]);
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
    const extensions: Extension[] = presence ? ["broadcast", "presence"] : ["broadcast"];
    const granted = await this.rolledBack(async (tx) => {
      // The settings, then each insert inside a savepoint rolled back to whatever it did, all
      // sent together (pipelined): each statement has its own sync, so a refused insert aborts
      // only until the rollback to its savepoint.
      const inserts = extensions.map((extension) =>
        tx`insert into realtime.messages (topic, extension) values (${ctx.topic}, ${extension})`
      );
      const steps = await Promise.allSettled([
        settings(tx, ctx),
        ...inserts.flatMap((insert, i) => [
          tx.unsafe(`savepoint probe_${i}`),
          insert,
          tx.unsafe(`rollback to savepoint probe_${i}`),
        ]),
      ]);
      const result: Record<Extension, boolean> = { broadcast: false, presence: false };
      const failed = steps.find((s, i) => s.status === "rejected" && (i - 2) % 3 !== 0);
      if (failed) throw (failed as PromiseRejectedResult).reason;
      extensions.forEach((extension, i) => {
        const step = steps[2 + 3 * i];
        if (step.status === "fulfilled") result[extension] = true;
        else if ((step.reason as { code?: string }).code !== "42501") throw step.reason;
      });
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
    if (this.errors.triggered) throw new PoolTimeoutError("authorization errors over db_pool");
    if (!(await this.checkout.acquire())) {
      this.counts.poolTimeouts++;
      this.errors.add();
      throw new PoolTimeoutError("no database connection within twice db_queue_target");
    }
    try {
      return await this.inTransaction(work);
    } finally {
      this.checkout.release();
    }
  }

  private async inTransaction<T>(work: (tx: postgres.TransactionSql) => Promise<T>): Promise<T> {
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

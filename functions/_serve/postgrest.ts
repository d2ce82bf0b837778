// The local stand-in for PostgREST (which cannot run here), at /rest/v1 on the gateway, for
// what the app and its tests use: RPCs (POST /rest/v1/rpc/<function> with named arguments) and
// plain reads (GET /rest/v1/<table>?select=a,b). It does what PostgREST does with such a
// request: verify the JWT, then in one transaction set the role and request.jwt.claims from it
// and call the function with the body's arguments (json_to_record) or select the columns, so
// grants and RLS decide exactly as they would. Errors come back in PostgREST's shape and
// statuses; a function returning one value answers that value. Local development only: the
// hosted project has the real PostgREST.
import { jwtVerify } from "jose";
import { env } from "../_shared/env.ts";
import { gatewaySql as sql } from "../_shared/db.ts";

const IDENT = /^[a-z_][a-z0-9_]*$/;
const COLUMNS = /^(\*|[a-z_][a-z0-9_]*(,[a-z_][a-z0-9_]*)*)$/;

function statusFor(code: string): number {
  if (code === "42501") return 403;
  if (code === "42883" || code === "PGRST202") return 404;
  if (code.startsWith("22") || code.startsWith("23") || code === "P0001") return 400;
  return 500;
}

/** A Postgres error in PostgREST's shape and status. */
function postgrestError(e: unknown): Response {
  const err = e as { code?: string; message?: string; hint?: string; detail?: string };
  const code = err.code ?? "XX000";
  if (code === "PGRST") {
    // RAISE SQLSTATE 'PGRST': message is the body, detail the status and headers (PostgREST 12).
    try {
      const meta = JSON.parse(err.detail ?? "{}") as {
        status?: number;
        headers?: Record<string, string>;
      };
      return new Response(err.message, {
        status: meta.status ?? 400,
        headers: { "content-type": "application/json", ...(meta.headers ?? {}) },
      });
    } catch { /* a malformed PGRST error: as any other below */ }
  }
  return Response.json(
    { code, message: err.message, hint: err.hint ?? null, details: err.detail ?? null },
    { status: statusFor(code) },
  );
}

let key: Uint8Array | undefined;

async function claimsOf(req: Request): Promise<Record<string, unknown> | undefined> {
  key ??= new TextEncoder().encode(env().jwtSecret);
  const token = /^Bearer (.+)$/.exec(req.headers.get("authorization") ?? "")?.[1] ??
    req.headers.get("apikey") ?? "";
  try {
    const { payload } = await jwtVerify(token, key, { algorithms: ["HS256"] });
    return typeof payload.role === "string" ? payload : undefined;
  } catch {
    return undefined;
  }
}

let preRequest: { at: number; fn: Promise<string | undefined> } | undefined;

/** PostgREST's db-pre-request hook: the setting pgrst.db_pre_request of its login role. */
function preRequestHook(): Promise<string | undefined> {
  if (!preRequest || performance.now() - preRequest.at > 10_000) {
    preRequest = {
      at: performance.now(),
      fn: sql()<{ fn: string }[]>`
        select o.option_value as fn
        from pg_db_role_setting as s, pg_options_to_table(s.setconfig) as o
        where s.setrole = 'authenticator'::regrole and s.setdatabase = 0
          and o.option_name = 'pgrst.db_pre_request'`.then((rows) => rows[0]?.fn),
    };
  }
  return preRequest.fn;
}

/** Runs `query` as PostgREST does: in one transaction, the request's role, claims, method and
 * path set, the db-pre-request hook called first. */
function asCaller<T>(
  claims: Record<string, unknown>,
  req: Request,
  query: (tx: import("postgres").TransactionSql) => Promise<T>,
): Promise<T> {
  return sql().begin(async (tx) => {
    const path = new URL(req.url).pathname.slice("/rest/v1".length);
    await tx`select set_config('role', ${String(claims.role)}, true),
                    set_config('request.jwt.claims', ${JSON.stringify(claims)}, true),
                    set_config('request.method', ${req.method}, true),
                    set_config('request.path', ${path}, true)`;
    const hook = await preRequestHook();
    if (hook && /^[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*$/.test(hook)) {
      await tx.unsafe(`select ${hook}()`);
    }
    return await query(tx);
  }) as Promise<T>;
}

export async function handlePostgrest(req: Request): Promise<Response> {
  const path = new URL(req.url).pathname.slice("/rest/v1/".length);
  const claims = await claimsOf(req);
  if (!claims) return Response.json({ code: "PGRST301", message: "JWT invalid" }, { status: 401 });
  try {
    if (path.startsWith("rpc/") && req.method === "POST") {
      return await rpc(path.slice(4), req, claims);
    }
    if (IDENT.test(path) && req.method === "GET") return await select(path, req, claims);
  } catch (e) {
    return postgrestError(e);
  }
  return Response.json({ code: "PGRST000", message: "not served locally" }, { status: 501 });
}

async function select(table: string, req: Request, claims: Record<string, unknown>) {
  const columns = new URL(req.url).searchParams.get("select") ?? "*";
  if (!COLUMNS.test(columns)) {
    return Response.json({
      code: "PGRST100",
      message: "only plain column lists are served locally",
    }, {
      status: 400,
    });
  }
  const rows = await asCaller(
    claims,
    req,
    (tx) =>
      tx.unsafe(`select to_jsonb(r) as row from (select ${columns} from public.${table}) as r`),
  );
  return Response.json(rows.map((r) => r.row));
}

async function rpc(fn: string, req: Request, claims: Record<string, unknown>) {
  if (!IDENT.test(fn)) {
    return Response.json({ code: "PGRST202", message: `no function ${fn}` }, { status: 404 });
  }
  const text = await req.text();
  const args = (text ? JSON.parse(text) : {}) as Record<string, unknown>;
  const params = await sql()<{ name: string; type: string; scalar: boolean }[]>`
    select a.name, format_type(a.type, null) as type,
           not p.proretset and t.typtype in ('b', 'd', 'e') as scalar
    from pg_proc as p
    join pg_type as t on t.oid = p.prorettype
    left join lateral unnest(p.proargnames[1:p.pronargs], p.proargtypes::oid[]) as a (name, type)
      on true
    where p.pronamespace = 'public'::regnamespace and p.proname = ${fn}`;
  if (params.length === 0) {
    return Response.json({ code: "PGRST202", message: `no function ${fn}` }, { status: 404 });
  }
  const used = params.filter((p) => p.name !== null && p.name in args);
  if (used.length !== Object.keys(args).length) {
    return Response.json(
      { code: "PGRST202", message: `no function ${fn} with these arguments` },
      { status: 404 },
    );
  }
  const call = used.map((p) => `${p.name} := a.${p.name}`).join(", ");
  const record = used.map((p) => `${p.name} ${p.type}`).join(", ");
  const rows = await asCaller(claims, req, (tx) =>
    tx.unsafe(
      used.length
        ? `select to_jsonb(r) as row
           from json_to_record($1::text::json) as a (${record}), public.${fn}(${call}) as r`
        : `select to_jsonb(r) as row from public.${fn}() as r`,
      used.length ? [JSON.stringify(args)] : [],
    ));
  return Response.json(params[0].scalar ? rows[0]?.row ?? null : rows.map((r) => r.row));
}

// The local stand-in for PostgREST (which cannot run here), at /rest/v1 on the gateway, for
// what the app and its tests use: RPCs (POST /rest/v1/rpc/<function> with named arguments) and
// plain reads (GET /rest/v1/<table>?select=a,b). It does what PostgREST v12 does with such a
// request (PostgREST/postgrest v12.2.12; docs/postgrest.md lists each behaviour and its file):
//   - the JWT decides the role; no token is the anon role; a bad or expired one is 401 PGRST301;
//   - one transaction, READ ONLY for GET and for STABLE/IMMUTABLE functions (Plan.hs), whose
//     first statement sets search_path, the impersonated role's own settings (statement_timeout
//     3 s for anon, 8 s for authenticated), role, request.jwt.claims, request.method,
//     request.path, request.headers, request.cookies and the function's hoisted settings
//     (Query.hs setPgLocals); then the db-pre-request hook; then the query;
//   - at most max_rows rows (supabase/config.toml, 1000) of a table or a set-returning
//     function, with Content-Range (Plan.hs treeRestrictRange, Response.hs);
//   - errors in PostgREST's shape, SQLSTATEs mapped to statuses as Error.hs pgErrorStatus does.
// Local development only: the hosted project has the real PostgREST.
import { errors as joseErrors, jwtVerify } from "jose";
import type postgres from "postgres";
import { env } from "../_shared/env.ts";
import { gatewaySql as sql } from "../_shared/db.ts";

const IDENT = /^[a-z_][a-z0-9_]*$/;
const COLUMNS = /^(\*|[a-z_][a-z0-9_]*(,[a-z_][a-z0-9_]*)*)$/;
/** A function's own settings PostgREST applies to the transaction (db-hoisted-tx-settings). */
const HOISTED = ["statement_timeout", "plan_filter.statement_cost_limit"];

/** [api] of supabase/config.toml: what the hosted project's PostgREST is configured with. */
export interface ApiConfig {
  schema: string;
  extraSearchPath: string[];
  maxRows: number;
}

export function apiConfig(toml: string): ApiConfig {
  const api = /^\[api\]\s*$([\s\S]*?)(?=^\[|(?![\s\S]))/m.exec(toml)?.[1] ?? "";
  const list = (key: string) =>
    JSON.parse(new RegExp(`^${key}\\s*=\\s*(\\[.*\\])`, "m").exec(api)?.[1] ?? "null") as
      | string[]
      | null;
  const maxRows = Number(/^max_rows\s*=\s*(\d+)/m.exec(api)?.[1] ?? "1000");
  return {
    schema: list("schemas")?.[0] ?? "public",
    extraSearchPath: list("extra_search_path") ?? ["public"],
    maxRows,
  };
}

let config: ApiConfig | undefined;
function api(): ApiConfig {
  config ??= apiConfig(
    Deno.readTextFileSync(new URL("../../supabase/config.toml", import.meta.url)),
  );
  return config;
}

/** The HTTP status PostgREST v12 gives a Postgres error (Error.hs pgErrorStatus). */
export function statusFor(code: string, message: string, authed: boolean): number {
  const exact: Record<string, number> = {
    "23503": 409,
    "23505": 409,
    "25006": 405,
    "53400": 500,
    "57P01": 503,
    "P0001": 400,
    "42P01": 404,
    "42P17": 500,
  };
  if (code in exact) return exact[code];
  if (code === "21000") return /requires a WHERE clause$/.test(message) ? 400 : 500;
  if (code === "42883") return message.startsWith("function xmlagg(") ? 406 : 404;
  if (code === "42501") return authed ? 403 : 401;
  if (/^PT\d{3}$/.test(code)) return Number(code.slice(2));
  const byClass: Record<string, number> = {
    "08": 503,
    "09": 500,
    "0L": 403,
    "0P": 403,
    "25": 500,
    "28": 403,
    "2D": 500,
    "38": 500,
    "39": 500,
    "3B": 500,
    "40": 500,
    "53": 503,
    "54": 500,
    "55": 500,
    "57": 500,
    "58": 500,
    "F0": 500,
    "HV": 500,
    "P0": 500,
    "XX": 500,
  };
  return byClass[code.slice(0, 2)] ?? 400;
}

function pgrstError(status: number, code: string, message: string, headers = {}): Response {
  return Response.json({ code, message, details: null, hint: null }, { status, headers });
}

/** A Postgres error in PostgREST's shape and status. */
function postgrestError(e: unknown, authed: boolean): Response {
  const err = e as { code?: string; message?: string; hint?: string; detail?: string };
  const code = err.code ?? "";
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
  if (!/^[0-9A-Z]{5}$/.test(code)) {
    // Not an answer from Postgres: the connection failed (Error.hs ConnectionUsageError).
    return pgrstError(503, "PGRST000", "Could not connect with the database", {
      "retry-after": "0",
    });
  }
  const status = statusFor(code, err.message ?? "", authed);
  return Response.json(
    { code, message: err.message, details: err.detail ?? null, hint: err.hint ?? null },
    { status, headers: status === 401 ? { "www-authenticate": "Bearer" } : {} },
  );
}

let key: Uint8Array | undefined;

type Claims = Record<string, unknown> & { role: string };

/** The request's claims (Auth.hs): no token is the anon role; a bad one is refused. */
async function claimsOf(req: Request): Promise<Claims | Response> {
  key ??= new TextEncoder().encode(env().jwtSecret);
  const token = /^Bearer (.*)$/.exec(req.headers.get("authorization") ?? "")?.[1] ??
    req.headers.get("apikey") ?? "";
  if (token === "") return { role: "anon" };
  try {
    const { payload } = await jwtVerify(token, key, {
      algorithms: ["HS256", "HS384", "HS512"],
      clockTolerance: 30,
    });
    return { ...payload, role: typeof payload.role === "string" ? payload.role : "anon" };
  } catch (e) {
    const message = e instanceof joseErrors.JWTExpired ? "JWT expired" : "JWT invalid";
    return pgrstError(401, "PGRST301", message, {
      "www-authenticate": `Bearer error="invalid_token", error_description="${message}"`,
    });
  }
}

interface DbConfig {
  preRequest?: string;
  /** Each API role's own settings (ALTER ROLE ... SET), as PostgREST reads them (db-config). */
  roleSettings: Map<string, [string, string][]>;
}

let dbConfig: { at: number; value: Promise<DbConfig> } | undefined;

/** PostgREST reads these at start and on reload (Config/Database.hs queryRoleSettings,
 * queryDbSettings); here they are re-read every 10 s. */
function loadDbConfig(): Promise<DbConfig> {
  if (!dbConfig || performance.now() - dbConfig.at > 10_000) {
    const value = sql()<{ role: string; name: string; value: string }[]>`
      select r.rolname as role, o.option_name as name, o.option_value as value
      from pg_db_role_setting as s
      join pg_roles as r on r.oid = s.setrole
      cross join lateral pg_options_to_table(s.setconfig) as o
      where s.setdatabase = 0
        and (r.rolname = 'authenticator' and o.option_name = 'pgrst.db_pre_request'
          or pg_has_role('authenticator', r.oid, 'member') and r.rolname <> 'authenticator'
            and exists (select from pg_settings as ps
                        where ps.name = o.option_name
                          and (ps.context = 'user'
                            or has_parameter_privilege('authenticator', ps.name, 'set'))))`
      .then((rows) => {
        const config: DbConfig = { roleSettings: new Map() };
        for (const r of rows) {
          if (r.name === "pgrst.db_pre_request") config.preRequest = r.value;
          else {
            const list = config.roleSettings.get(r.role) ?? [];
            list.push([r.name, r.value.toLowerCase()]);
            config.roleSettings.set(r.role, list);
          }
        }
        return config;
      });
    value.catch(() => dbConfig = undefined);
    dbConfig = { at: performance.now(), value };
  }
  return dbConfig.value;
}

function cookies(header: string | null): Record<string, string> {
  const out: Record<string, string> = {};
  for (const part of (header ?? "").split(";")) {
    const at = part.indexOf("=");
    if (at > 0) out[part.slice(0, at).trim()] = part.slice(at + 1).trim();
  }
  return out;
}

const quoteIdent = (s: string) => `"${s.replaceAll('"', '""')}"`;

/** Runs `query` as PostgREST does: in one transaction (read only unless `write`), the
 * request's settings set in one statement, then the db-pre-request hook. */
async function asCaller<T>(
  claims: Claims,
  req: Request,
  write: boolean,
  functionSettings: [string, string][],
  query: (tx: postgres.TransactionSql) => Promise<T>,
): Promise<T> {
  const config = await loadDbConfig();
  const { schema, extraSearchPath } = api();
  const url = new URL(req.url);
  const headers: Record<string, string> = {};
  for (const [name, value] of req.headers) if (name !== "cookie") headers[name] = value;
  const settings: [string, string][] = [
    ["search_path", [schema, ...extraSearchPath].map(quoteIdent).join(", ")],
    ...(config.roleSettings.get(claims.role) ?? []),
    ["role", claims.role],
    ["request.jwt.claims", JSON.stringify(claims)],
    ["request.method", req.method],
    ["request.path", url.pathname.slice("/rest/v1".length)],
    ["request.headers", JSON.stringify(headers)],
    ["request.cookies", JSON.stringify(cookies(req.headers.get("cookie")))],
    ...functionSettings,
  ];
  const names = settings.map(([n]) => n);
  const values = settings.map(([, v]) => v);
  return await sql().begin(write ? "read write" : "read only", async (tx) => {
    await tx`select set_config(s.name, s.value, true)
             from unnest(${names}::text[], ${values}::text[]) as s (name, value)`;
    const hook = config.preRequest;
    if (hook && /^[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*$/.test(hook)) {
      await tx.unsafe(`select ${hook}()`);
    }
    return await query(tx);
  }) as T;
}

/** Content-Range of a read of `n` rows from the first (no count asked: total `*`). */
function contentRange(n: number): string {
  return n === 0 ? "*/*" : `0-${n - 1}/*`;
}

export async function handlePostgrest(req: Request): Promise<Response> {
  const path = new URL(req.url).pathname.slice("/rest/v1/".length);
  const claims = await claimsOf(req);
  if (claims instanceof Response) return claims;
  try {
    if (path.startsWith("rpc/") && req.method === "POST") {
      return await rpc(path.slice(4), req, claims);
    }
    if (IDENT.test(path) && req.method === "GET") return await select(path, req, claims);
  } catch (e) {
    return postgrestError(e, claims.role !== "anon");
  }
  return pgrstError(501, "PGRST000", "not served locally");
}

async function select(table: string, req: Request, claims: Claims) {
  const columns = new URL(req.url).searchParams.get("select") ?? "*";
  if (!COLUMNS.test(columns)) {
    return pgrstError(400, "PGRST100", "only plain column lists are served locally");
  }
  const { schema, maxRows } = api();
  const rows = await asCaller(claims, req, false, [], (tx) =>
    tx.unsafe(
      `select to_jsonb(r) as row from (select ${columns} from ${
        quoteIdent(schema)
      }.${table}) as r limit ${maxRows}`,
    ));
  return Response.json(rows.map((r) => r.row), {
    headers: { "content-range": contentRange(rows.length) },
  });
}

interface Signature {
  name: string | null;
  type: string | null;
  scalar: boolean;
  void: boolean;
  volatile: boolean;
  settings: string[] | null;
}

async function rpc(fn: string, req: Request, claims: Claims) {
  if (!IDENT.test(fn)) return pgrstError(404, "PGRST202", `no function ${fn}`);
  const text = await req.text();
  let args: Record<string, unknown>;
  try {
    args = (text ? JSON.parse(text) : {}) as Record<string, unknown>;
    if (typeof args !== "object" || args === null || Array.isArray(args)) throw new Error();
  } catch {
    return pgrstError(400, "PGRST102", "Empty or invalid json");
  }
  const { schema, maxRows } = api();
  const params = await sql()<Signature[]>`
    select a.name, format_type(a.type, null) as type,
           not p.proretset and t.typtype in ('b', 'd', 'e') and t.oid <> 'void'::regtype as scalar,
           t.oid = 'void'::regtype as void, p.provolatile = 'v' as volatile,
           p.proconfig as settings
    from pg_proc as p
    join pg_type as t on t.oid = p.prorettype
    left join lateral unnest(p.proargnames[1:p.pronargs], p.proargtypes::oid[]) as a (name, type)
      on true
    where p.pronamespace = ${schema}::regnamespace and p.proname = ${fn}`;
  if (params.length === 0) return pgrstError(404, "PGRST202", `no function ${fn}`);
  const used = params.filter((p) => p.name !== null && p.name in args);
  if (used.length !== Object.keys(args).length) {
    return pgrstError(404, "PGRST202", `no function ${fn} with these arguments`);
  }
  const { scalar, void: isVoid, volatile, settings } = params[0];
  const hoisted = (settings ?? []).map((
    s,
  ) => [s.slice(0, s.indexOf("=")), s.slice(s.indexOf("=") + 1)])
    .filter(([name]) => HOISTED.includes(name)) as [string, string][];
  const call = used.map((p) => `${p.name} := a.${p.name}`).join(", ");
  const record = used.map((p) => `${p.name} ${p.type}`).join(", ");
  const target = `${quoteIdent(schema)}.${fn}`;
  const row = isVoid ? "null::jsonb" : "to_jsonb(r)";
  const rows = await asCaller(claims, req, volatile, hoisted, (tx) =>
    tx.unsafe(
      used.length
        ? `select ${row} as row
           from json_to_record($1::text::json) as a (${record}), ${target}(${call}) as r
           limit ${maxRows}`
        : `select ${row} as row from ${target}() as r limit ${maxRows}`,
      used.length ? [JSON.stringify(args)] : [],
    ));
  if (isVoid) return new Response(null, { status: 204 });
  if (scalar) return Response.json(rows[0]?.row ?? null);
  return Response.json(rows.map((r) => r.row), {
    headers: { "content-range": contentRange(rows.length) },
  });
}

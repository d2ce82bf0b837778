// A stand-in for PostgREST's RPC endpoint (POST /rest/v1/rpc/<function>), which cannot run
// here, doing what PostgREST does with such a request against the real database: verify the
// JWT, then in one transaction set the role and request.jwt.claims from it and call the
// function with named arguments taken from the JSON body (json_to_record, as PostgREST does).
// Errors come back in PostgREST's shape and statuses. Used as supabase-js's fetch for
// /rest/v1/ URLs only; every other request goes to the real network.
import { jwtVerify } from "jose";
import type postgres from "postgres";

type Sql = postgres.Sql;

const JWT_SECRET = Deno.env.get("SUPABASE_JWT_SECRET")!;

function statusFor(code: string): number {
  if (code === "42501") return 403;
  if (code === "42883" || code === "PGRST202") return 404;
  if (code.startsWith("22") || code.startsWith("23") || code === "P0001") return 400;
  return 500;
}

export function postgrestFetch(sql: Sql, calls: string[] = []): typeof fetch {
  return async (input, init) => {
    const req = new Request(input, init);
    const url = new URL(req.url);
    const match = /^\/rest\/v1\/rpc\/([a-z_][a-z0-9_]*)$/.exec(url.pathname);
    const table = /^\/rest\/v1\/([a-z_][a-z0-9_]*)$/.exec(url.pathname);
    if (!url.pathname.startsWith("/rest/v1/")) return await fetch(req);
    const token = /^Bearer (.+)$/.exec(req.headers.get("authorization") ?? "")?.[1] ??
      req.headers.get("apikey") ?? "";
    let claims: Record<string, unknown>;
    try {
      claims = (await jwtVerify(token, new TextEncoder().encode(JWT_SECRET))).payload;
    } catch {
      return Response.json({ code: "PGRST301", message: "JWT invalid" }, { status: 401 });
    }
    // GET /rest/v1/<table>?select=a,b: the rows the caller's role and RLS let it see.
    const columns = url.searchParams.get("select") ?? "*";
    if (
      table && req.method === "GET" && /^(\*|[a-z_][a-z0-9_]*(,[a-z_][a-z0-9_]*)*)$/.test(columns)
    ) {
      calls.push(table[1]);
      try {
        const rows = await sql.begin(async (tx) => {
          await tx`select set_config('role', ${String(claims.role)}, true),
                          set_config('request.jwt.claims', ${JSON.stringify(claims)}, true)`;
          return await tx.unsafe(
            `select to_jsonb(r) as row from (select ${columns} from public.${table[1]}) as r`,
          );
        });
        return Response.json(rows.map((r) => r.row));
      } catch (e) {
        return postgrestError(e);
      }
    }
    if (!match || req.method !== "POST") {
      return Response.json({ code: "PGRST000", message: "not emulated" }, { status: 501 });
    }
    const fn = match[1];
    calls.push(fn);
    const args = await req.json() as Record<string, unknown>;
    const params = await sql<{ name: string; type: string }[]>`
      select a.name, format_type(a.type, null) as type
      from pg_proc as p,
        unnest(p.proargnames[1:p.pronargs], p.proargtypes::oid[]) as a (name, type)
      where p.pronamespace = 'public'::regnamespace and p.proname = ${fn}`;
    const [shape] = await sql<{ scalar: boolean }[]>`
      select not p.proretset and t.typtype in ('b', 'd', 'e') as scalar
      from pg_proc as p join pg_type as t on t.oid = p.prorettype
      where p.pronamespace = 'public'::regnamespace and p.proname = ${fn}`;
    const used = params.filter((p) => p.name in args);
    if (used.length !== Object.keys(args).length) {
      return Response.json(
        { code: "PGRST202", message: `no function ${fn} with these arguments` },
        {
          status: 404,
        },
      );
    }
    try {
      const rows = await sql.begin(async (tx) => {
        await tx`select set_config('role', ${String(claims.role)}, true),
                        set_config('request.jwt.claims', ${JSON.stringify(claims)}, true)`;
        const call = used.map((p) => `${p.name} := a.${p.name}`).join(", ");
        const record = used.map((p) => `${p.name} ${p.type}`).join(", ");
        return await tx.unsafe(
          used.length
            ? `select to_jsonb(r) as row
               from json_to_record($1::text::json) as a (${record}), public.${fn}(${call}) as r`
            : `select to_jsonb(r) as row from public.${fn}() as r`,
          used.length ? [JSON.stringify(args)] : [],
        );
      });
      // A function returning one value answers that value, not rows (PostgREST).
      return Response.json(shape?.scalar ? rows[0]?.row ?? null : rows.map((r) => r.row));
    } catch (e) {
      return postgrestError(e);
    }
  };
}

/** A Postgres error in PostgREST's shape and status. */
function postgrestError(e: unknown): Response {
  const err = e as { code?: string; message?: string; hint?: string; detail?: string };
  const code = err.code ?? "XX000";
  return Response.json(
    { code, message: err.message, hint: err.hint ?? null, details: err.detail ?? null },
    { status: statusFor(code) },
  );
}

// The gateway's PostgREST stand-in (functions/_serve/postgrest.ts) against PostgREST v12's
// documented behaviour (docs/postgrest.md): statuses by SQLSTATE (Error.hs pgErrorStatus),
// the anon role without a token, the per-request settings, read-only transactions, max_rows
// on RPC results, and get_online_users_batch within max_rows. Probe functions are created in
// public for the test and dropped after it.
import assert from "node:assert/strict";
import { SltrApi } from "../../client/mod.ts";
import { apiConfig, statusFor } from "../../functions/_serve/postgrest.ts";
import { ANON_KEY, API_URL, ROOT, SERVICE_ROLE_KEY } from "../_lib/env.ts";
import { userJwt } from "../_lib/jwt.ts";
import { test } from "../_lib/harness.ts";
import { client, createUsers, database, deleteUsers } from "../realtime/_helpers.ts";

interface Answer {
  status: number;
  headers: Headers;
  body: unknown;
}

async function rpc(
  fn: string,
  args: unknown,
  token: string | null,
  headers: Record<string, string> = {},
): Promise<Answer> {
  const res = await fetch(`${API_URL}/rest/v1/rpc/${fn}`, {
    method: "POST",
    headers: {
      "content-type": "application/json",
      ...(token === null ? {} : { apikey: ANON_KEY, authorization: `Bearer ${token}` }),
      ...headers,
    },
    body: JSON.stringify(args),
  });
  const text = await res.text();
  return { status: res.status, headers: res.headers, body: text ? JSON.parse(text) : null };
}

test("sqlstates_map_to_the_statuses_of_postgrest_v12", async () => {
  await Promise.resolve();
  // Error.hs pgErrorStatus at v12.2.12; `authed` is false for the anon role.
  const table: [string, number, boolean?][] = [
    ["08006", 503],
    ["09000", 500],
    ["0L000", 403],
    ["0P000", 403],
    ["23503", 409],
    ["23505", 409],
    ["23514", 400],
    ["25006", 405],
    ["25001", 500],
    ["28000", 403],
    ["2D000", 500],
    ["38000", 500],
    ["39000", 500],
    ["3B000", 500],
    ["40001", 500],
    ["53400", 500],
    ["53300", 503],
    ["53100", 503],
    ["54001", 500],
    ["55P03", 500],
    ["57P01", 503],
    ["57014", 500],
    ["58030", 500],
    ["F0000", 500],
    ["HV000", 500],
    ["P0001", 400],
    ["P0002", 500],
    ["XX000", 500],
    ["42883", 404],
    ["42P01", 404],
    ["42P17", 500],
    ["42501", 403, true],
    ["42501", 401, false],
    ["PT418", 418],
    ["22023", 400],
    ["22P02", 400],
    ["42703", 400],
  ];
  for (const [code, status, authed = true] of table) {
    assert.equal(statusFor(code, "", authed), status, `${code} (authed ${authed})`);
  }
  assert.equal(statusFor("21000", "UPDATE requires a WHERE clause", true), 400);
  assert.equal(statusFor("21000", "more than one row returned by a subquery", true), 500);
  assert.equal(statusFor("42883", "function xmlagg(integer) does not exist", true), 406);
});

test("the_stand_in_reads_the_projects_api_settings", async () => {
  const config = apiConfig(await Deno.readTextFile(`${ROOT}/supabase/config.toml`));
  assert.deepEqual(config, {
    schema: "public",
    extraSearchPath: ["public", "extensions"],
    maxRows: 1000,
  });
});

test("requests_run_as_postgrest_runs_them", async () => {
  const sql = database();
  const [user] = await createUsers(sql, "postgrest", 1);
  await sql.unsafe(`
    create function public.sltr_test_request(stable_probe boolean default false)
    returns jsonb language sql volatile as $$
      select jsonb_build_object(
        'role', current_user, 'search_path', current_setting('search_path'),
        'statement_timeout', current_setting('statement_timeout'),
        'read_only', current_setting('transaction_read_only'),
        'claims', current_setting('request.jwt.claims', true)::jsonb,
        'method', current_setting('request.method', true),
        'path', current_setting('request.path', true),
        'headers', current_setting('request.headers', true)::jsonb,
        'cookies', current_setting('request.cookies', true)::jsonb)
    $$;
    create function public.sltr_test_request_stable()
    returns text language sql stable as $$ select current_setting('transaction_read_only') $$;
    create function public.sltr_test_slow()
    returns integer language sql volatile set statement_timeout = '50ms'
    as $$ select 1 from pg_sleep(0.2) $$;
    create function public.sltr_test_rows()
    returns setof integer language sql volatile as $$ select generate_series(1, 1500) $$;
    create function public.sltr_test_raise(code text)
    returns void language plpgsql volatile as $$
      begin raise exception 'probe %', code using errcode = code; end $$;
    create function public.sltr_test_insert()
    returns void language sql volatile as $$ insert into public.favorites values (null, null) $$;
    create function public.sltr_test_write()
    returns void language sql stable as $$ select public.sltr_test_insert() $$;
    grant execute on function public.sltr_test_request(boolean), public.sltr_test_request_stable(),
      public.sltr_test_slow(), public.sltr_test_rows(), public.sltr_test_raise(text),
      public.sltr_test_write(), public.sltr_test_insert() to anon, authenticated;`);
  try {
    const token = await userJwt(user);
    const me = await rpc("sltr_test_request", {}, token, { cookie: "a=1; theme=dark" });
    assert.equal(me.status, 200);
    const got = me.body as Record<string, unknown>;
    assert.equal(got.role, "authenticated");
    assert.equal(got.search_path, '"public", "public", "extensions"');
    assert.equal(got.statement_timeout, "8s", "authenticated's own setting");
    assert.equal(got.read_only, "off", "a volatile function may write");
    assert.equal((got.claims as { sub: string }).sub, user);
    assert.equal(got.method, "POST");
    assert.equal(got.path, "/rpc/sltr_test_request");
    const headers = got.headers as Record<string, string>;
    assert.equal(headers.apikey, ANON_KEY);
    assert.equal(headers["content-type"], "application/json");
    assert.equal(headers.cookie, undefined, "cookies apart");
    assert.deepEqual(got.cookies, { a: "1", theme: "dark" });

    // No token: the anon role, with its 3 s; the anon key is the same role.
    for (const anon of [null, ANON_KEY]) {
      const a = await rpc("sltr_test_request", {}, anon);
      const body = a.body as Record<string, unknown>;
      assert.equal(a.status, 200);
      assert.equal(body.role, "anon");
      assert.equal(body.statement_timeout, "3s");
      assert.equal((body.claims as { role: string }).role, "anon");
    }
    const service = await rpc("sltr_test_request", {}, SERVICE_ROLE_KEY);
    assert.equal((service.body as { role: string }).role, "service_role");

    // GET and stable functions: read only; a write there is 25006, 405.
    assert.equal((await rpc("sltr_test_request_stable", {}, token)).body, "on");
    const write = await rpc("sltr_test_write", {}, token);
    assert.equal(write.status, 405);
    assert.equal((write.body as { code: string }).code, "25006");

    // A function's own statement_timeout is hoisted: 57014, 500.
    const slow = await rpc("sltr_test_slow", {}, token);
    assert.equal(slow.status, 500);
    assert.equal((slow.body as { code: string }).code, "57014");

    // max_rows: 1000 of the function's 1500 rows, and says so.
    const rows = await rpc("sltr_test_rows", {}, token);
    assert.equal((rows.body as number[]).length, 1000);
    assert.equal(rows.headers.get("content-range"), "0-999/*");

    // SQLSTATEs raised for real, through the stand-in.
    for (
      const [code, status] of [["23505", 409], ["23503", 409], ["53300", 503], ["P0001", 400]] as [
        string,
        number,
      ][]
    ) {
      const r = await rpc("sltr_test_raise", { code }, token);
      assert.equal(r.status, status, code);
      assert.deepEqual(Object.keys(r.body as object).sort(), [
        "code",
        "details",
        "hint",
        "message",
      ]);
      assert.equal((r.body as { code: string }).code, code);
    }
    const raised = await rpc("sltr_test_raise", { code: "ZZ999" }, token);
    assert.equal(raised.status, 400, "an unknown SQLSTATE is 400");

    // 42501: 403 for a signed-in user, 401 (WWW-Authenticate) for anon.
    const denied = await rpc("get_online_users_batch", { user_ids: [user] }, null);
    assert.equal(denied.status, 401);
    assert.equal(denied.headers.get("www-authenticate"), "Bearer");
    assert.equal((denied.body as { code: string }).code, "42501");
    const forbidden = await rpc("sltr_test_raise", { code: "42501" }, token);
    assert.equal(forbidden.status, 403);

    // A bad token is refused, never taken for anon.
    const bad = await rpc("sltr_test_request", {}, token.slice(0, -4) + "AAAA");
    assert.equal(bad.status, 401);
    assert.equal((bad.body as { code: string }).code, "PGRST301");
    assert.match(bad.headers.get("www-authenticate") ?? "", /invalid_token/);
    const expired = await rpc("sltr_test_request", {}, await userJwt(user, { expiresIn: -60 }));
    assert.equal(expired.status, 401);
    assert.equal((expired.body as { message: string }).message, "JWT expired");
  } finally {
    await sql.unsafe(`
      drop function public.sltr_test_request(boolean), public.sltr_test_request_stable(),
        public.sltr_test_slow(), public.sltr_test_rows(), public.sltr_test_raise(text),
        public.sltr_test_write(), public.sltr_test_insert()`);
    await deleteUsers(sql, [user]);
    await sql.end();
  }
});

test("get_online_users_batch_stays_within_max_rows_and_the_client_pages", async () => {
  const sql = database();
  const users = await createUsers(sql, "max-rows", 3);
  try {
    const token = await userJwt(users[0]);
    const ids = [...users, ...Array.from({ length: 1497 }, () => crypto.randomUUID())];
    const refused = await rpc("get_online_users_batch", { user_ids: ids }, token);
    assert.equal(refused.status, 400, "1500 ids would be cut to 1000 rows: refused");
    assert.equal((refused.body as { code: string }).code, "22023");
    assert.match((refused.body as { message: string }).message, /at most 1000 ids, got 1500/);
    const page = await rpc("get_online_users_batch", { user_ids: ids.slice(0, 1000) }, token);
    assert.equal(page.status, 200);

    // Directly (the functions, pg_cron), there is no row cap and 10,000 stay allowed.
    const [direct] = await sql<{ n: number }[]>`
      select count(*)::int as n from public.get_online_users_batch(${ids}::uuid[])`;
    assert.equal(direct.n, 3);

    // The client module pages: 1500 ids, two calls, every known user answered.
    const api = new SltrApi(client(ANON_KEY, { token: () => userJwt(users[1]) }));
    const statuses = await api.getOnlineUsersBatch([...ids].reverse());
    assert.deepEqual(statuses.map((s) => s.user_id).sort(), [...users].sort());
  } finally {
    await deleteUsers(sql, users);
    await sql.end();
  }
});

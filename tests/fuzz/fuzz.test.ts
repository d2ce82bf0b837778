// Bad input, generated: thousands of malformed requests to every function (broken JSON, wrong
// types, huge numbers, NaN and Infinity, unicode and SQL in strings, wrong methods, missing or
// forged signatures and JWTs, expired and `alg: none` JWTs, oversized bodies). Every answer
// must be a 4xx JSON error {"error": {"code", "message"}}: never a 2xx, a 5xx or a hang (each
// request has a timeout), and the database must be byte-for-byte unchanged afterwards.
//
// Seeded and repeatable: a small PRNG (mulberry32, tests/_lib/rng.ts) drives every choice; the seed is printed,
// and FUZZ_SEED=<n> replays a run exactly (FUZZ_COUNT=<n> sets the number of requests).
//
// It runs against a throwaway stack (tests/_lib/throwaway.ts), so that the before/after checksum of
// profiles, presence_buffer and favorites is exact: nobody else writes there, and its pg_cron
// jobs are switched off for the run. Fuzzed user ids all begin with f0220000-, a prefix the
// test first checks no real user has; the one fuzz user that exists (so that bodies signed
// or authorized for it are refused for what they say, not for who sends them) is created in
// that namespace.
// What it covers and what it found: docs/faults.md.
import assert from "node:assert/strict";
import { functions } from "../../functions/_serve/registry.ts";
import { ANON_KEY, JWT_SECRET, SERVICE_ROLE_KEY } from "../_lib/env.ts";
import { signJwt, unsignedJwt } from "../_lib/jwt.ts";
import { rng } from "../_lib/rng.ts";
import { test } from "../_lib/harness.ts";
import { direct, serverErrors, signature, startStack, stopStack } from "../_lib/throwaway.ts";

const SEED = Number(Deno.env.get("FUZZ_SEED") ?? Math.floor(Math.random() * 2 ** 31));
const COUNT = Number(Deno.env.get("FUZZ_COUNT") ?? "3000");
const CONCURRENCY = 16;
const REQUEST_TIMEOUT_MS = 10_000;
const FUZZ_USER = "f0220000-0000-4000-8000-000000000001";

// --- choices, from a seeded PRNG (tests/_lib/rng.ts) ------------------------------------

class Gen {
  constructor(readonly next: () => number) {}
  int(max: number): number {
    return Math.floor(this.next() * max);
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)];
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  hex(n: number): string {
    return Array.from({ length: n }, () => "0123456789abcdef"[this.int(16)]).join("");
  }
  /** A uuid in the fuzz namespace (f0220000-...): never a real user's id. */
  fuzzId(): string {
    return `f0220000-${this.hex(4)}-4${this.hex(3)}-8${this.hex(3)}-${this.hex(12)}`;
  }
  /** A string nobody should accept where an id, a status or a time is expected. */
  nasty(): string {
    return this.pick([
      "",
      " ",
      "null",
      "undefined",
      "NaN",
      "Infinity",
      "-Infinity",
      "1e309",
      "-0",
      "0x10",
      "'; drop table public.profiles; --",
      "' or '1'='1",
      '"); select pg_sleep(10); --',
      "$$; truncate public.presence_buffer; $$",
      "\\x00\\x01",
      "\u0000",
      "\u202e\u0644\u0627 \ud83d\ude00 \u00e9\u0301",
      "\ud800",
      "%00%27",
      "../../etc/passwd",
      "<script>alert(1)</script>",
      "{{7*7}}",
      "ONLINE",
      "Online ",
      "offline\n",
      "2026-13-45T25:61:61Z",
      "9999-12-31T23:59:59Z",
      "1970-01-01T00:00:00Z",
      "2026-01-01 00:00:00",
      "00000000-0000-0000-0000-00000000000g",
      "f0220000-0000-4000-8000-00000000000",
      "x".repeat(1 + this.int(5000)),
      "\u00ff".repeat(1 + this.int(300)),
    ]);
  }
  /** A nasty string that is not a number either ("-0" is a valid coordinate, so strings that
   * Number() reads as finite are left out; "0x10" is refused by nearby-online's decimal check,
   * pinned in tests/functions/nearby_online.test.ts). */
  nastyNotNumber(): string {
    for (;;) {
      const text = this.nasty();
      if (text.trim() === "" || !Number.isFinite(Number(text))) return text;
    }
  }
  /** A JSON value of the wrong kind for anything typed. */
  wrongValue(): unknown {
    return this.pick<() => unknown>([
      () => null,
      () => true,
      () => 0,
      () => -1,
      () => 1e308,
      () => -1e308,
      () => Number.MAX_SAFE_INTEGER + 2,
      () => 5e-324,
      () => 123.456,
      () => [],
      () => [[[]]],
      () => ({}),
      () => ({ $ne: null }),
      () => ({ __proto__: { admin: true } }),
      () => this.nasty(),
    ])();
  }
}

// --- tokens -----------------------------------------------------------------------------

async function jwt(
  claims: Record<string, unknown>,
  opts: { secret?: string; expiresIn?: number | string } = {},
): Promise<string> {
  return await signJwt(claims, opts.secret ?? JWT_SECRET, { expiresIn: opts.expiresIn });
}

interface Tokens {
  user: string;
  /** Tokens no function may accept: each is refused with 401. */
  invalid: string[];
}

async function tokens(): Promise<Tokens> {
  const now = Math.floor(Date.now() / 1000);
  const claims = { sub: FUZZ_USER, role: "authenticated", aud: "authenticated" };
  const user = await jwt(claims);
  const [h, p, s] = user.split(".");
  return {
    user,
    invalid: [
      await jwt(claims, { secret: "not-the-project-secret-not-the-project-secret" }),
      await jwt(claims, { expiresIn: now - 60 }),
      await jwt({ ...claims, role: "service_role" }, { expiresIn: now - 1 }),
      await jwt({ sub: FUZZ_USER, aud: "authenticated" }), // no role claim
      unsignedJwt({ ...claims, exp: now + 3600 }),
      unsignedJwt({ role: "service_role", exp: now + 3600 }),
      `${h}.${btoa(JSON.stringify({ ...claims, role: "service_role" })).replace(/=+$/, "")}.${s}`,
      `${h}.${p}.${s.slice(0, -4)}AAAA`,
      `${h}.${p}`,
      "e30.e30.e30",
      "garbage",
      "Bearer",
      `${user}x`,
    ],
  };
}

// --- malformed requests -----------------------------------------------------------------

interface Fuzzed {
  fn: string;
  what: string;
  method: string;
  path: string;
  headers: Record<string, string>;
  body?: string;
}

const WRONG_METHODS = ["PUT", "DELETE", "PATCH"];

/** Header values must be printable ASCII, or fetch refuses to send them. */
const printable = (text: string) => [...text].map((c) => (c >= " " && c <= "~" ? c : "?")).join("");

function authHeader(g: Gen, t: Tokens, allowAnon = true): Record<string, string> {
  const choice = g.int(allowAnon ? 4 : 3);
  if (choice === 0) return {};
  if (choice === 1) return { authorization: `Bearer ${g.pick(t.invalid)}` };
  if (choice === 2) {
    return { authorization: g.pick(["Basic abc", "Bearer", "bearer  ", printable(g.nasty())]) };
  }
  return { authorization: `Bearer ${ANON_KEY}` };
}

function brokenJson(g: Gen): string {
  return g.pick([
    "",
    "{",
    "}",
    "[",
    "nul",
    "{'events': []}",
    '{"events": [,]}',
    '{"events": [{"user_id": "x",}]}',
    '{"user_ids": NaN}',
    '{"user_ids": [Infinity]}',
    '{"events": [{"lat": -Infinity}]}',
    '{"a": 1} trailing',
    "\u0000",
    "\ufeff{}",
    `"${g.nasty().replace(/["\\]/g, "")}`,
    "{".repeat(10000),
    "[".repeat(1 + g.int(3000)),
  ]);
}

/** A presence event with at least one field wrong. */
function badEvent(g: Gen): Record<string, unknown> {
  const event: Record<string, unknown> = {
    user_id: g.chance(0.5) ? FUZZ_USER : g.fuzzId(),
    status: g.pick(["online", "offline"]),
    at: new Date(Date.now() - g.int(60_000)).toISOString(),
  };
  if (g.chance(0.5)) Object.assign(event, { lat: 52.5, lng: 13.4 });
  const field = g.pick(["user_id", "status", "at", "lat", "lng", "both", "extra_only"]);
  switch (field) {
    case "user_id":
    case "status":
    case "at":
      event[field] = g.chance(0.5) ? g.nasty() : g.wrongValue();
      // (A missing user_id is fine from a signed-in user: it means themselves.)
      if (field !== "user_id" && g.chance(0.2)) delete event[field];
      break;
    case "lat":
      // (A null lat with a lng is refused too: they go together.)
      event.lat = g.pick<unknown>([91, -90.0001, 1e308, "52.5", null, [], g.nasty()]);
      event.lng = 13.4;
      break;
    case "lng":
      event.lat = 52.5;
      event.lng = g.pick<unknown>([180.5, -181, -1e308, "13", {}, g.nasty()]);
      break;
    case "both":
      event.lat = g.pick([52.5, undefined]);
      event.lng = event.lat === undefined ? 13.4 : undefined;
      break;
    default:
      // A well-formed event in a body that is wrong elsewhere; make this one wrong too.
      event.status = g.pick(["away", "ONLINE", 1, null]);
  }
  return event;
}

/** A presence-webhook body that must be refused: not an object, no or empty events, events of
 * the wrong kind, or at least one bad event among good-looking ones. */
function badWebhookBody(g: Gen, maxEvents: number): string {
  const shape = g.int(8);
  if (shape === 0) return brokenJson(g);
  if (shape === 1) return JSON.stringify(g.wrongValue());
  if (shape === 2) return JSON.stringify({ events: g.pick<unknown>([[], {}, null, "[]", 1]) });
  if (shape === 3) return JSON.stringify({ event: [badEvent(g)] });
  if (shape === 4) {
    // Too many events (413), all of them bad anyway.
    return JSON.stringify({
      events: Array.from({ length: maxEvents + 1 + g.int(20) }, () => badEvent(g)),
    });
  }
  const good = Array.from({ length: g.int(4) }, () => ({
    user_id: FUZZ_USER,
    status: "online",
    at: new Date(Date.now() - g.int(60_000)).toISOString(),
  }));
  const events: unknown[] = [...good];
  events.splice(g.int(events.length + 1), 0, g.chance(0.8) ? badEvent(g) : g.wrongValue());
  return JSON.stringify({ events });
}

function oversized(g: Gen, bytes: number): string {
  const filler = g.pick(["x", "\u00e9", " ", "["]);
  return `{"events":[{"user_id":"${FUZZ_USER}","pad":"${
    filler.repeat(Math.ceil(bytes / filler.length))
  }"}]}`;
}

async function presenceWebhook(g: Gen, t: Tokens): Promise<Fuzzed> {
  const base = { fn: "presence-webhook", path: "presence-webhook" };
  const kind = g.int(10);
  const json = { "content-type": "application/json" };
  if (kind === 0) {
    const method = g.pick(["GET", ...WRONG_METHODS]);
    return { ...base, what: "wrong method", method, headers: json, body: undefined };
  }
  if (kind === 1) {
    return {
      ...base,
      what: "no credentials",
      method: "POST",
      headers: json,
      body: badWebhookBody(g, 1000),
    };
  }
  if (kind === 2) {
    // A forged or broken signature over a body that would otherwise be fine.
    const body = JSON.stringify({
      events: [{ user_id: FUZZ_USER, status: "online", at: new Date().toISOString() }],
    });
    const now = Math.floor(Date.now() / 1000);
    const sig = g.pick([
      `t=${now},v1=${g.hex(64)}`,
      `t=${now - 3600},v1=${(await signature(body, now - 3600)).split("v1=")[1]}`,
      `t=${now + 3600},v1=${(await signature(body, now + 3600)).split("v1=")[1]}`,
      `t=${now}`,
      `v1=${g.hex(64)}`,
      `t=${now},v1=${g.hex(63)}`,
      `t=abc,v1=${g.hex(64)}`,
      `t=${now},v1=${g.hex(64)},x=1=2`,
      "",
      printable(g.nasty()),
      await signature(body.replace("online", "offline")),
    ]);
    return {
      ...base,
      what: "forged signature",
      method: "POST",
      headers: { ...json, "x-sltr-signature": sig },
      body,
    };
  }
  if (kind === 3) {
    return {
      ...base,
      what: "bad jwt",
      method: "POST",
      headers: { ...json, ...authHeader(g, t) },
      body: badWebhookBody(g, 10),
    };
  }
  if (kind === 4) {
    // A user reporting someone else's presence (403) or too many events (413).
    const events = g.chance(0.5)
      ? [{ user_id: g.fuzzId(), status: "online", at: new Date().toISOString() }]
      : Array.from({ length: 11 + g.int(5) }, () => ({
        status: "online",
        at: new Date().toISOString(),
      }));
    return {
      ...base,
      what: "user not allowed",
      method: "POST",
      headers: { ...json, authorization: `Bearer ${t.user}` },
      body: JSON.stringify({ events }),
    };
  }
  if (kind === 5 && g.chance(0.15)) {
    const body = oversized(g, 256 * 1024 + 1 + g.int(512 * 1024));
    return {
      ...base,
      what: "oversized body",
      method: "POST",
      headers: { ...json, "x-sltr-signature": await signature(body) },
      body,
    };
  }
  if (kind === 6) {
    return {
      ...base,
      what: "user, bad body",
      method: "POST",
      headers: { ...json, authorization: `Bearer ${t.user}` },
      body: badWebhookBody(g, 10),
    };
  }
  const body = badWebhookBody(g, 1000);
  return {
    ...base,
    what: "signed, bad body",
    method: "POST",
    headers: { ...json, "x-sltr-signature": await signature(body) },
    body,
  };
}

function badCoordinate(g: Gen, max: number): string {
  return String(
    g.pick<unknown>([
      max + 0.001,
      -max - 1,
      1e309,
      -1e309,
      "NaN",
      "Infinity",
      "-Infinity",
      "",
      " ",
      "1,5",
      "52.5abc",
      "1e",
      "--1",
      g.nastyNotNumber(),
    ]),
  );
}

function nearbyOnline(g: Gen, t: Tokens): Fuzzed {
  const base = { fn: "nearby-online" };
  const kind = g.int(4);
  const params = new URLSearchParams({ lat: "52.52", lng: "13.405" });
  if (kind === 0) {
    return {
      ...base,
      what: "bad jwt",
      method: "GET",
      path: `nearby-online?${params}`,
      headers: authHeader(g, t),
    };
  }
  if (kind === 1) {
    return {
      ...base,
      what: "wrong method",
      method: g.pick(["POST", ...WRONG_METHODS]),
      path: `nearby-online?${params}`,
      headers: { authorization: `Bearer ${t.user}` },
      body: g.chance(0.5) ? brokenJson(g) : undefined,
    };
  }
  // A signed-in user with a bad query: at least one parameter wrong.
  const bad = g.pick(["lat", "lng", "radius_m", "limit", "missing"]);
  if (bad === "lat") params.set("lat", badCoordinate(g, 90));
  if (bad === "lng") params.set("lng", badCoordinate(g, 180));
  if (bad === "radius_m") {
    params.set(
      "radius_m",
      String(g.pick<unknown>([0, -1, 50001, 1.5, "1e3", "NaN", 2 ** 53, "", g.nastyNotNumber()])),
    );
  }
  if (bad === "limit") {
    params.set(
      "limit",
      String(g.pick<unknown>([0, -5, 501, 2.5, "ten", "Infinity", g.nastyNotNumber()])),
    );
  }
  if (bad === "missing") params.delete(g.pick(["lat", "lng"]));
  if (g.chance(0.3)) params.append("lat", g.nastyNotNumber()); // duplicates must not rescue it
  return {
    ...base,
    what: `bad ${bad}`,
    method: "GET",
    path: `nearby-online?${params}`,
    headers: { authorization: `Bearer ${t.user}` },
  };
}

function onlineStatus(g: Gen, t: Tokens): Fuzzed {
  const base = { fn: "online-status", path: "online-status" };
  const json = { "content-type": "application/json" };
  const kind = g.int(5);
  if (kind === 0) {
    return {
      ...base,
      what: "bad jwt",
      method: "POST",
      headers: { ...json, ...authHeader(g, t) },
      body: JSON.stringify({ user_ids: [g.fuzzId()] }),
    };
  }
  if (kind === 1) {
    return {
      ...base,
      what: "wrong method",
      method: g.pick(["GET", ...WRONG_METHODS]),
      headers: { authorization: `Bearer ${t.user}` },
    };
  }
  if (kind === 2 && g.chance(0.1)) {
    const body = g.chance(0.5)
      ? JSON.stringify({ user_ids: Array.from({ length: 10_001 }, () => g.fuzzId()) })
      : `{"user_ids":["${"f".repeat(512 * 1024 + 1 + g.int(100_000))}"]}`;
    return {
      ...base,
      what: "too many ids or too large",
      method: "POST",
      headers: { ...json, authorization: `Bearer ${t.user}` },
      body,
    };
  }
  const shape = g.int(5);
  const body = shape === 0
    ? brokenJson(g)
    : shape === 1
    ? JSON.stringify(g.wrongValue())
    : shape === 2
    ? JSON.stringify({ user_ids: g.pick<unknown>([[], null, {}, g.fuzzId(), 1]) })
    : JSON.stringify({
      user_ids: [
        ...Array.from({ length: g.int(5) }, () => g.fuzzId()),
        g.chance(0.7) ? g.nasty() : g.wrongValue(),
      ],
    });
  return {
    ...base,
    what: "bad body",
    method: "POST",
    headers: { ...json, authorization: `Bearer ${t.user}` },
    body,
  };
}

function health(g: Gen): Fuzzed {
  return {
    fn: "health",
    what: "wrong method",
    method: g.pick(["POST", ...WRONG_METHODS]),
    path: "health",
    headers: g.chance(0.5) ? { "content-type": "application/json" } : {},
    body: g.chance(0.5) ? brokenJson(g) : undefined,
  };
}

function metrics(g: Gen, t: Tokens): Fuzzed {
  if (g.chance(0.7)) {
    const auth = g.chance(0.3) ? { authorization: `Bearer ${t.user}` } : authHeader(g, t);
    return {
      fn: "metrics",
      what: "not service_role",
      method: "GET",
      path: "metrics",
      headers: auth,
    };
  }
  return {
    fn: "metrics",
    what: "wrong method",
    method: g.pick(["POST", ...WRONG_METHODS]),
    path: "metrics",
    headers: { authorization: `Bearer ${SERVICE_ROLE_KEY}` },
    body: g.chance(0.5) ? brokenJson(g) : undefined,
  };
}

/** Functions added later get the requests every function must refuse. */
function anyFunction(g: Gen, t: Tokens, fn: string): Fuzzed {
  return {
    fn,
    what: "wrong method, bad credentials",
    method: g.pick(WRONG_METHODS),
    path: fn,
    headers: { "content-type": "application/json", ...authHeader(g, t, false) },
    body: g.chance(0.5) ? brokenJson(g) : JSON.stringify(g.wrongValue()),
  };
}

async function generate(g: Gen, t: Tokens): Promise<Fuzzed> {
  const fn = g.pick(Object.keys(functions));
  switch (fn) {
    case "presence-webhook":
      return await presenceWebhook(g, t);
    case "nearby-online":
      return nearbyOnline(g, t);
    case "online-status":
      return onlineStatus(g, t);
    case "health":
      return health(g);
    case "metrics":
      return metrics(g, t);
    default:
      return anyFunction(g, t, fn);
  }
}

// --- the run ------------------------------------------------------------------------------

interface Outcome {
  req: Fuzzed;
  status: number;
  problem?: string;
}

async function send(url: string, req: Fuzzed): Promise<Outcome> {
  try {
    const res = await fetch(`${url}/${req.path}`, {
      method: req.method,
      headers: req.headers,
      body: req.body,
      signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
    });
    const text = await res.text();
    if (res.status < 400 || res.status >= 500) {
      return { req, status: res.status, problem: `status ${res.status}: ${text.slice(0, 200)}` };
    }
    if (!(res.headers.get("content-type") ?? "").startsWith("application/json")) {
      return {
        req,
        status: res.status,
        problem: `content-type ${res.headers.get("content-type")}`,
      };
    }
    let body: { error?: { code?: unknown; message?: unknown } };
    try {
      body = JSON.parse(text);
    } catch {
      return { req, status: res.status, problem: `not JSON: ${text.slice(0, 200)}` };
    }
    const keys = Object.keys(body ?? {});
    if (
      keys.length !== 1 || typeof body.error?.code !== "string" ||
      !/^[a-z][a-z0-9_]*$/.test(body.error.code) || typeof body.error.message !== "string" ||
      body.error.message.length === 0
    ) {
      return { req, status: res.status, problem: `not the error shape: ${text.slice(0, 200)}` };
    }
    return { req, status: res.status };
  } catch (e) {
    return { req, status: 0, problem: `no answer: ${e}` };
  }
}

const CHECKSUM = `
  select md5(coalesce((select string_agg(p::text, '|' order by p.id) from public.profiles as p), ''))
    || md5(coalesce((select string_agg(b::text, '|' order by b.user_id) from public.presence_buffer as b), ''))
    || md5(coalesce((select string_agg(f::text, '|' order by f.user_id, f.favorite_id) from public.favorites as f), ''))
    as checksum`;

test("every_malformed_request_gets_a_4xx_json_error_and_changes_nothing", async () => {
  console.log(`fuzz: seed ${SEED} (replay with FUZZ_SEED=${SEED}), ${COUNT} requests`);
  const stack = await startStack("sltr-fuzz-");
  const db = direct(stack);
  try {
    // A quiet database: no pg_cron runs, and whatever they would do done now.
    await db.unsafe(`update cron.job set active = false`);
    await db.unsafe(`select private.flush_presence(), private.expire_stale_presence()`);
    const [{ n }] = await db.unsafe<{ n: number }[]>(
      `select count(*)::int as n from auth.users where id::text like 'f0220000-%'`,
    );
    assert.equal(n, 0, "no real user's id is in the fuzz namespace");
    await db.unsafe(
      `insert into auth.users (id, aud, role, email)
         values ($1, 'authenticated', 'authenticated', 'fuzz@sltr.test')`,
      [FUZZ_USER],
    );
    await db.unsafe(
      `insert into public.profiles (id, display_name, latitude, longitude)
         values ($1, 'Fuzz', 52.5, 13.4)`,
      [FUZZ_USER],
    );
    const [{ checksum: before }] = await db.unsafe<{ checksum: string }[]>(CHECKSUM);

    const g = new Gen(rng(SEED));
    const t = await tokens();
    const requests: Fuzzed[] = [];
    for (let i = 0; i < COUNT; i++) requests.push(await generate(g, t));

    const started = performance.now();
    const outcomes: Outcome[] = [];
    let next = 0;
    await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
      while (next < requests.length) outcomes.push(await send(stack.url, requests[next++]));
    }));
    const took = performance.now() - started;

    const [{ checksum: after }] = await db.unsafe<{ checksum: string }[]>(CHECKSUM);

    const byStatus = new Map<string, number>();
    for (const o of outcomes) {
      const k = `${o.req.fn} ${o.status}`;
      byStatus.set(k, (byStatus.get(k) ?? 0) + 1);
    }
    console.log(
      `fuzz: ${outcomes.length} requests in ${Math.round(took)} ms; ` +
        [...byStatus].sort().map(([k, v]) => `${k} x${v}`).join(", "),
    );
    const problems = outcomes.filter((o) => o.problem);
    assert.deepEqual(
      problems.slice(0, 20).map((o) =>
        `${o.req.fn} (${o.req.what}) ${o.req.method} ${o.req.path.slice(0, 120)}: ${o.problem}`
      ),
      [],
      `${problems.length} answers were not a 4xx JSON error (seed ${SEED});\n` +
        `server errors:\n${serverErrors(stack)}`,
    );
    assert.equal(outcomes.length, COUNT);
    assert.equal(after, before, "profiles, presence_buffer and favorites are unchanged");
  } finally {
    await db.end();
    await stopStack(stack);
  }
});

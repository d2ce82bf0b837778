// The demo page at /demo/ (demo/index.html, demo/app.js, supabase-js's browser build) and its
// sign-in: /demo/session?user=<seed number | user id> answers a token for that seed user,
// minted with the local JWT secret (GoTrue does not run here), and where they are. Local stack
// only: served when SLTR_DEMO=true, which scripts/stack.sh sets.
import { localUserJwt, seedUserId } from "../../scripts/token.ts";
import { gatewaySql as sql } from "../_shared/db.ts";
import { env } from "../_shared/env.ts";

const ROOT = new URL("../../", import.meta.url);
const FILES: Record<string, [string, string]> = {
  "/demo/": ["demo/index.html", "text/html; charset=utf-8"],
  "/demo/index.html": ["demo/index.html", "text/html; charset=utf-8"],
  "/demo/app.js": ["demo/app.js", "text/javascript; charset=utf-8"],
  "/demo/supabase.js": [
    "node_modules/@supabase/supabase-js/dist/umd/supabase.js",
    "text/javascript; charset=utf-8",
  ],
};
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export const demoEnabled = Deno.env.get("SLTR_DEMO") === "true";

export async function handleDemo(req: Request): Promise<Response> {
  const url = new URL(req.url);
  if (url.pathname === "/demo") return Response.redirect(new URL("/demo/", url), 302);
  const file = FILES[url.pathname];
  if (file) {
    return new Response(await Deno.readFile(new URL(file[0], ROOT)), {
      headers: { "content-type": file[1], "cache-control": "no-cache" },
    });
  }
  if (url.pathname === "/demo/session") {
    const who = url.searchParams.get("user") ?? "";
    const id = /^\d{1,4}$/.test(who) ? seedUserId(Number(who)) : UUID.test(who) ? who : "";
    const [profile] = id
      ? await sql()`select id, display_name, latitude, longitude from public.profiles where id = ${id}`
      : [];
    if (!profile) return Response.json({ error: "no such user" }, { status: 404 });
    return Response.json({
      user_id: profile.id,
      display_name: profile.display_name,
      lat: profile.latitude ?? 52.52,
      lng: profile.longitude ?? 13.405,
      token: await localUserJwt(profile.id, env().jwtSecret),
      anon_key: Deno.env.get("SUPABASE_ANON_KEY"),
    });
  }
  return new Response("not found", { status: 404 });
}

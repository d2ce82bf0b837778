// Realtime's broadcast REST API (supabase/realtime lib/realtime_web/router.ex,
// controllers/broadcast_controller.ex, tenants/batch_broadcast.ex, plugs/auth_tenant.ex):
//   POST /api/broadcast                               {"messages":[{topic, event, payload, private?, id?}]}
//   POST /api/broadcast/<topic>/events/<event>[?private=true]   body: JSON, or octet-stream bytes
// Authorization: Bearer <jwt> (else the apikey header), with role and exp. Private messages pass
// the sender's write policy per topic: the batch skips refused topics silently, the single
// endpoint answers 403.
import { emptyPolicies, RlsPolicyError } from "./authorization.ts";
import type { Claims } from "./jwt.ts";
import type { RealtimeServer } from "./server.ts";

const unauthorized = () => Response.json({ message: "Unauthorized" }, { status: 401 });
const isMap = (v: unknown): v is Record<string, unknown> =>
  typeof v === "object" && v !== null && !Array.isArray(v);

async function claimsOf(server: RealtimeServer, req: Request): Promise<Claims | undefined> {
  const bearer = /^Bearer\s+(\S+)$/i.exec(req.headers.get("authorization") ?? "")?.[1];
  const result = await server.tokens.verify(bearer ?? req.headers.get("apikey") ?? undefined);
  return result.ok ? result.claims : undefined;
}

async function mayWrite(
  server: RealtimeServer,
  claims: Claims,
  req: Request,
  topic: string,
): Promise<boolean> {
  const headers: Record<string, string> = {};
  for (const [name, value] of req.headers) if (name.startsWith("x-")) headers[name] = value;
  try {
    const policies = await server.authorizer.write(
      {
        topic,
        claims,
        role: claims.role,
        sub: typeof claims.sub === "string" ? claims.sub : undefined,
        headers,
      },
      emptyPolicies(),
    );
    return policies.broadcast.write === true;
  } catch (e) {
    if (e instanceof RlsPolicyError) return false;
    throw e;
  }
}

/** A batch the tenant's rate refuses (RealtimeServer.batchRefusal): 429 with its reason. */
function rateLimited(server: RealtimeServer, n: number): Response | undefined {
  const message = server.batchRefusal(n);
  return message ? Response.json({ message }, { status: 429 }) : undefined;
}

export async function handleRest(
  server: RealtimeServer,
  req: Request,
  path: string,
): Promise<Response> {
  if (req.method !== "POST") return Response.json({ message: "Not Found" }, { status: 404 });
  const claims = await claimsOf(server, req);
  if (!claims) return unauthorized();
  if (path === "/broadcast") return await batch(server, req, claims);
  const single = /^\/broadcast\/([^/]+)\/events\/([^/]+)$/.exec(path);
  if (single) {
    return await one(
      server,
      req,
      claims,
      decodeURIComponent(single[1]),
      decodeURIComponent(single[2]),
    );
  }
  return Response.json({ message: "Not Found" }, { status: 404 });
}

async function batch(server: RealtimeServer, req: Request, claims: Claims): Promise<Response> {
  let body: unknown;
  try {
    body = await req.json();
  } catch {
    return Response.json({ errors: { detail: "Bad Request" } }, { status: 400 });
  }
  const messages = isMap(body) ? body.messages : undefined;
  if (!Array.isArray(messages) || messages.length === 0) {
    return Response.json({ errors: { messages: ["can't be blank"] } }, { status: 422 });
  }
  const limit = server.config.limits.maxPayloadKb * 1000 + 500;
  const errors: Record<string, string[]>[] = [];
  for (const m of messages) {
    const e: Record<string, string[]> = {};
    if (!isMap(m)) e.message = ["is invalid"];
    else {
      for (const field of ["topic", "event"]) {
        if (typeof m[field] !== "string" || m[field] === "") e[field] = ["can't be blank"];
      }
      if (!isMap(m.payload)) e.payload = ["can't be blank"];
      else if (new TextEncoder().encode(JSON.stringify(m.payload)).byteLength > limit) {
        e.payload = ["Payload size exceeds tenant limit"];
      }
    }
    errors.push(e);
  }
  if (errors.some((e) => Object.keys(e).length > 0)) {
    return Response.json({ errors: { messages: errors } }, { status: 422 });
  }
  const limited = rateLimited(server, messages.length);
  if (limited) return limited;
  const allowed = new Map<string, boolean>();
  for (const m of messages as Record<string, unknown>[]) {
    const topic = m.topic as string;
    const isPrivate = m.private === true || m.private === "true";
    if (isPrivate) {
      if (!allowed.has(topic)) allowed.set(topic, await mayWrite(server, claims, req, topic));
      if (!allowed.get(topic)) continue; // skipped silently, still 202
    }
    const payload: Record<string, unknown> = {
      payload: m.payload,
      event: m.event,
      type: "broadcast",
    };
    if (typeof m.id === "string") payload.meta = { id: m.id };
    server.events.add();
    server.counts.restBroadcasts++;
    server.fanout(`${isPrivate ? "private" : "public"}:${topic}`, { kind: "map", payload });
  }
  return new Response(null, { status: 202 });
}

async function one(
  server: RealtimeServer,
  req: Request,
  claims: Claims,
  topic: string,
  event: string,
): Promise<Response> {
  const isPrivate = new URL(req.url).searchParams.get("private") === "true";
  const binary = (req.headers.get("content-type") ?? "").startsWith("application/octet-stream");
  const bytes = new Uint8Array(await req.arrayBuffer());
  if (!binary) {
    try {
      JSON.parse(new TextDecoder().decode(bytes));
    } catch {
      return Response.json({ errors: { payload: ["is invalid"] } }, { status: 422 });
    }
  }
  if (bytes.byteLength > server.config.limits.maxPayloadKb * 1000 + 500) {
    return Response.json({ errors: { payload: ["Payload size exceeds tenant limit"] } }, {
      status: 422,
    });
  }
  const limited = rateLimited(server, 1);
  if (limited) return limited;
  if (isPrivate && !(await mayWrite(server, claims, req, topic))) return unauthorized403();
  server.events.add();
  server.counts.restBroadcasts++;
  server.fanout(`${isPrivate ? "private" : "public"}:${topic}`, {
    kind: "user",
    event,
    encoding: binary ? "binary" : "json",
    bytes,
  });
  return new Response(null, { status: 202 });
}

const unauthorized403 = () => Response.json({ message: "Unauthorized" }, { status: 403 });

// /realtime/v1 relayed to the Realtime endpoint's own process (realtime/main.ts) when the
// functions run as several workers (serve.ts). A socket is first admitted by the endpoint
// (ADMISSION_HEADER: the same checks as the upgrade, so a refused client gets the HTTP status
// and body hosted Realtime would give), then its frames are passed both ways as they come,
// text as text and binary as binary; either side closing closes the other. The broadcast REST
// API (/realtime/v1/api/...) is forwarded as a plain request.
import { ADMISSION_HEADER } from "../../realtime/server.ts";

/** Close codes that never go on the wire (RFC 6455 7.4.1: no status, abnormal, TLS). */
const unsendable = new Set([1005, 1006, 1015]);

function closeQuietly(ws: WebSocket, code?: number, reason?: string): void {
  if (ws.readyState === WebSocket.CLOSING || ws.readyState === WebSocket.CLOSED) return;
  try {
    if (code !== undefined && !unsendable.has(code)) ws.close(code, reason);
    else ws.close();
  } catch {
    try {
      ws.close(); // a code this side may not send: closed without one
    } catch {
      // already closing
    }
  }
}

/** Only the request's own headers that matter upstream: the API key and the x-* headers
 * (Realtime hands those to policies as request.headers). */
function forwardedHeaders(req: Request): Headers {
  const out = new Headers();
  for (const [name, value] of req.headers) {
    if (name.startsWith("x-") && name !== ADMISSION_HEADER) out.set(name, value);
  }
  for (const name of ["authorization", "apikey", "content-type"]) {
    const value = req.headers.get(name);
    if (value) out.set(name, value);
  }
  return out;
}

export async function relayRealtime(req: Request, upstream: string): Promise<Response> {
  const url = new URL(req.url);
  const target = `${upstream}${url.pathname}${url.search}`;
  if (req.headers.get("upgrade")?.toLowerCase() !== "websocket") {
    return await fetch(target, {
      method: req.method,
      headers: forwardedHeaders(req),
      body: req.body,
    }).catch(() => unavailable());
  }
  const headers = forwardedHeaders(req);
  headers.set(ADMISSION_HEADER, "1");
  const admitted = await fetch(target, { headers }).catch(() => undefined);
  if (!admitted) return unavailable();
  if (admitted.status !== 204) return admitted;

  const { socket: client, response } = Deno.upgradeWebSocket(req, { idleTimeout: 0 });
  const server = new WebSocket(
    target.replace(/^http/, "ws"),
    // Deno's WebSocket takes headers (not in the browser's API).
    { headers: forwardedHeaders(req) } as unknown as string[],
  );
  client.binaryType = server.binaryType = "arraybuffer";
  const early: (string | ArrayBuffer)[] = [];
  client.onmessage = (e) => {
    if (server.readyState === WebSocket.OPEN) server.send(e.data);
    else early.push(e.data);
  };
  server.onopen = () => {
    for (const frame of early.splice(0)) server.send(frame);
  };
  server.onmessage = (e) => {
    if (client.readyState === WebSocket.OPEN) client.send(e.data);
  };
  server.onclose = (e) => closeQuietly(client, e.code, e.reason);
  server.onerror = () => closeQuietly(client);
  client.onclose = (e) => closeQuietly(server, e.code, e.reason);
  client.onerror = () => closeQuietly(server);
  return response;
}

function unavailable(): Response {
  return Response.json({ error: "Realtime is unavailable" }, {
    status: 503,
    headers: { "retry-after": "2" },
  });
}

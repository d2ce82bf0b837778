// Phoenix frames as Supabase Realtime reads and writes them. Two serializers, chosen by the
// socket's `vsn` query parameter (docs/realtime.md, "Wire protocol"):
//   1.0.0  JSON objects {topic, event, payload, ref, join_ref}; replies and pushes leave out
//          join_ref (Phoenix.Socket.V1.JSONSerializer); binary broadcasts are never sent.
//   2.0.0  JSON arrays [join_ref, ref, topic, event, payload] plus two binary kinds
//          (supabase/realtime lib/realtime_web/socket/v2_serializer.ex): kind 3, a client's
//          broadcast push, and kind 4, a broadcast to a client. realtime-js decodes only kind 4
//          (lib/serializer.js), so that is the only binary frame this server ever sends.

export type Vsn = "1.0.0" | "2.0.0";

/** A decoded client frame. A kind-3 broadcast push arrives with event "broadcast" and a
 * UserBroadcastPush as its payload. */
export interface Message {
  joinRef: string | null;
  ref: string | null;
  topic: string;
  event: string;
  payload: unknown;
}

/** A client's broadcast as the binary frame carried it: the user payload stays bytes. */
export interface UserBroadcastPush {
  kind: "user_broadcast_push";
  userEvent: string;
  encoding: "json" | "binary";
  bytes: Uint8Array;
}

/** What a broadcast looks like on its way out, before each serializer encodes it once. */
export type Broadcast =
  /** Entered as bytes (a V2 client, the REST single endpoint, the database): kind 4. */
  | {
    kind: "user";
    event: string;
    encoding: "json" | "binary";
    bytes: Uint8Array;
    meta?: Record<string, unknown>;
  }
  /** Entered as a JSON map (a V1 client, the REST batch endpoint): a text frame. */
  | { kind: "map"; payload: Record<string, unknown> };

/** A frame the server refuses to decode; logged and ignored, the socket stays open
 * (RealtimeWeb.Socket.handle_in rescues InvalidMessageError and Jason.DecodeError). */
export class InvalidMessage extends Error {}

const decoder = new TextDecoder("utf-8", { fatal: true });
const encoder = new TextEncoder();

function refOrNull(value: unknown): string | null {
  if (value === null || value === undefined) return null;
  return typeof value === "string" ? value : String(value);
}

export function decodeText(vsn: Vsn, text: string): Message {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (e) {
    throw new InvalidMessage(`invalid JSON: ${(e as Error).message}`);
  }
  if (vsn === "2.0.0") {
    if (!Array.isArray(parsed) || parsed.length < 5) {
      throw new InvalidMessage(`expected V2 array, got: ${text.slice(0, 200)}`);
    }
    const [joinRef, ref, topic, event, payload] = parsed;
    return checked({ joinRef: refOrNull(joinRef), ref: refOrNull(ref), topic, event, payload });
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
    throw new InvalidMessage(`expected a JSON object, got: ${text.slice(0, 200)}`);
  }
  const o = parsed as Record<string, unknown>;
  return checked({
    joinRef: refOrNull(o.join_ref),
    ref: refOrNull(o.ref),
    topic: o.topic as string,
    event: o.event as string,
    payload: o.payload,
  });
}

function checked(m: { topic: unknown; event: unknown } & Omit<Message, "topic" | "event">) {
  if (typeof m.topic !== "string" || typeof m.event !== "string") {
    throw new InvalidMessage("topic and event must be strings");
  }
  return m as Message;
}

/** Kind 3, the only binary frame a client sends (realtime-js `channel.send` on 2.0.0). */
export function decodeBinary(bytes: Uint8Array): Message {
  if (bytes.byteLength < 7 || bytes[0] !== 3) {
    throw new InvalidMessage(`unsupported binary frame (kind ${bytes[0]})`);
  }
  const lengths = [bytes[1], bytes[2], bytes[3], bytes[4], bytes[5]];
  const encoding = bytes[6] === 0 ? "binary" : "json";
  let offset = 7;
  const fields: string[] = [];
  for (const length of lengths) {
    if (offset + length > bytes.byteLength) throw new InvalidMessage("truncated binary frame");
    try {
      fields.push(decoder.decode(bytes.subarray(offset, offset + length)));
    } catch {
      throw new InvalidMessage("binary frame header is not UTF-8");
    }
    offset += length;
  }
  const [joinRef, ref, topic, userEvent, metadata] = fields;
  if (metadata) {
    try {
      JSON.parse(metadata);
    } catch {
      throw new InvalidMessage("binary frame metadata is not JSON");
    }
  }
  const push: UserBroadcastPush = {
    kind: "user_broadcast_push",
    userEvent,
    encoding,
    bytes: bytes.slice(offset),
  };
  return { joinRef: joinRef || null, ref: ref || null, topic, event: "broadcast", payload: push };
}

/** A reply or push from a channel (or the socket), as text. */
export function encodeMessage(vsn: Vsn, m: Message): string {
  if (vsn === "2.0.0") return JSON.stringify([m.joinRef, m.ref, m.topic, m.event, m.payload]);
  return JSON.stringify({ topic: m.topic, event: m.event, payload: m.payload, ref: m.ref });
}

export function encodeReply(
  vsn: Vsn,
  joinRef: string | null,
  ref: string | null,
  topic: string,
  status: "ok" | "error",
  response: unknown,
): string {
  return encodeMessage(vsn, {
    joinRef,
    ref,
    topic,
    event: "phx_reply",
    payload: { status, response },
  });
}

function header255(value: string, what: string): Uint8Array {
  const bytes = encoder.encode(value);
  if (bytes.byteLength > 255) throw new RangeError(`${what} longer than 255 bytes`);
  return bytes;
}

/** Kind 4: `u8 kind, u8 len(topic), u8 len(event), u8 len(metadata), u8 encoding`, the fields,
 * then the payload bytes. */
export function encodeUserBroadcast(
  topic: string,
  b: Extract<Broadcast, { kind: "user" }>,
): Uint8Array {
  const t = header255(topic, "topic");
  const e = header255(b.event, "event");
  const m = header255(b.meta ? JSON.stringify(b.meta) : "", "metadata");
  const out = new Uint8Array(5 + t.byteLength + e.byteLength + m.byteLength + b.bytes.byteLength);
  out.set([4, t.byteLength, e.byteLength, m.byteLength, b.encoding === "json" ? 1 : 0]);
  let offset = 5;
  for (const part of [t, e, m, b.bytes]) {
    out.set(part, offset);
    offset += part.byteLength;
  }
  return out;
}

/**
 * A broadcast encoded for one serializer, or undefined when that serializer cannot carry it
 * (V1 and a binary payload). Callers encode once per message and serializer and reuse it for
 * every subscriber (MessageDispatcher's cache).
 */
export function encodeBroadcast(
  vsn: Vsn,
  topic: string,
  b: Broadcast,
): string | Uint8Array | undefined {
  if (b.kind === "map") {
    return encodeMessage(vsn, {
      joinRef: null,
      ref: null,
      topic,
      event: "broadcast",
      payload: b.payload,
    });
  }
  if (vsn === "2.0.0") return encodeUserBroadcast(topic, b);
  if (b.encoding === "binary") return undefined;
  let payload: unknown;
  try {
    payload = JSON.parse(decoder.decode(b.bytes));
  } catch {
    return undefined;
  }
  const body: Record<string, unknown> = { type: "broadcast", event: b.event, payload };
  if (b.meta) body.meta = b.meta;
  return encodeMessage(vsn, { joinRef: null, ref: null, topic, event: "broadcast", payload: body });
}

/** The payload's size as the server limits it (Tenants.validate_payload_size measures
 * :erlang.external_size; the JSON byte length is our stand-in for it). */
export function payloadBytes(payload: unknown): number {
  if (payload && typeof payload === "object" && "kind" in payload) {
    const p = payload as UserBroadcastPush;
    if (p.kind === "user_broadcast_push") return p.bytes.byteLength;
  }
  return encoder.encode(JSON.stringify(payload ?? null)).byteLength;
}

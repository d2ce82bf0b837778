// Token checks as hosted Realtime makes them, with its wording (supabase/realtime
// lib/realtime_web/channels/auth/jwt_verification.ex, channels_authorization.ex): the signature
// first (HS256/384/512 with the project secret; no JWKS here), then `exp` in the future and
// `iat` a number when present, then `role` and `exp` required.
import { compactVerify } from "jose";

export type Claims = Record<string, unknown> & { role: string; exp: number; sub?: string };

export type TokenError =
  | { kind: "missing_api_key" }
  | { kind: "token_malformed" }
  | { kind: "signer" }
  | { kind: "signature" }
  | { kind: "expired"; secondsAgo: number }
  | { kind: "missing_claims" }
  | { kind: "invalid_claims" };

export type TokenResult = { ok: true; claims: Claims } | { ok: false; error: TokenError };

const HS = new Set(["HS256", "HS384", "HS512"]);

function decodePart(part: string): unknown {
  const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
  return JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(
    Uint8Array.from(atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4)), (c) => c.charCodeAt(0)),
  ));
}

export class TokenVerifier {
  private readonly secret: Uint8Array<ArrayBuffer>;
  /** The secret imported once per algorithm (jose imports raw bytes again on every call). */
  private readonly keys = new Map<string, Promise<CryptoKey>>();

  constructor(jwtSecret: string, private readonly nowSeconds = () => Date.now() / 1000) {
    this.secret = new TextEncoder().encode(jwtSecret);
  }

  private key(alg: string): Promise<CryptoKey> {
    let key = this.keys.get(alg);
    if (!key) {
      const hash = `SHA-${alg.slice(2)}`;
      key = crypto.subtle.importKey("raw", this.secret, { name: "HMAC", hash }, false, ["verify"]);
      this.keys.set(alg, key);
    }
    return key;
  }

  async verify(raw: unknown): Promise<TokenResult> {
    if (typeof raw !== "string") return { ok: false, error: { kind: "missing_api_key" } };
    let token: string;
    try {
      token = decodeURIComponent(raw).replace(/\s/g, "");
    } catch {
      token = raw.replace(/\s/g, "");
    }
    const parts = token.split(".");
    let header: unknown;
    let claims: unknown;
    try {
      if (parts.length !== 3) throw new Error("parts");
      header = decodePart(parts[0]);
      claims = decodePart(parts[1]);
    } catch {
      return { ok: false, error: { kind: "token_malformed" } };
    }
    if (typeof claims !== "object" || claims === null || Array.isArray(claims)) {
      return { ok: false, error: { kind: "token_malformed" } };
    }
    const alg = (header as { alg?: unknown } | null)?.alg;
    if (typeof alg !== "string" || !HS.has(alg)) return { ok: false, error: { kind: "signer" } };
    try {
      await compactVerify(token, await this.key(alg), { algorithms: [alg] });
    } catch {
      return { ok: false, error: { kind: "signature" } };
    }
    const c = claims as Record<string, unknown>;
    const now = Math.floor(this.nowSeconds());
    if ("exp" in c) {
      if (typeof c.exp !== "number") return { ok: false, error: { kind: "invalid_claims" } };
      if (!(c.exp > now)) {
        return { ok: false, error: { kind: "expired", secondsAgo: now - Math.round(c.exp) } };
      }
      c.exp = Math.round(c.exp);
    }
    if ("iat" in c && typeof c.iat !== "number") {
      return { ok: false, error: { kind: "invalid_claims" } };
    }
    if (!("role" in c) || !("exp" in c)) return { ok: false, error: { kind: "missing_claims" } };
    return { ok: true, claims: c as Claims };
  }
}

/** The message hosted Realtime gives for each failure (join reasons and system pushes). */
export function tokenMessage(e: TokenError): string {
  switch (e.kind) {
    case "missing_api_key":
      return "API key is missing";
    case "token_malformed":
      return "The token provided is not a valid JWT";
    case "signer":
      return "Failed to generate JWT signer, check your JWT secret or JWKS configuration";
    case "signature":
      return "Failed to validate JWT signature";
    case "expired":
      return `Token has expired ${e.secondsAgo} seconds ago`;
    case "missing_claims":
      return "Fields `role` and `exp` are required in JWT";
    case "invalid_claims":
      return "Token claims are invalid";
  }
}

/** The join refusal reason: `<Code>: <message>` (realtime_channel.ex join/3). */
export function tokenJoinReason(e: TokenError): string {
  const code = {
    missing_api_key: "MalformedJWT",
    token_malformed: "MalformedJWT",
    signer: "JwtSignerError",
    signature: "JwtSignatureError",
    expired: "InvalidJWTToken",
    missing_claims: "InvalidJWTToken",
    invalid_claims: "InvalidJWTToken",
  }[e.kind];
  return `${code}: ${tokenMessage(e)}`;
}

/** The HTTP answer to a refused WebSocket upgrade (user_socket.ex handle_error/2). */
export function tokenConnectError(e: TokenError): { status: number; message: string } {
  if (e.kind === "expired") return { status: 401, message: "Token has expired" };
  if (e.kind === "invalid_claims") return { status: 500, message: "Error connecting to Realtime" };
  return { status: 401, message: tokenMessage(e) };
}

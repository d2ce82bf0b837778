// Who is calling: Supabase JWTs (HS256, the project's JWT secret) and signed service batches.
import { jwtVerify } from "jose";
import { env } from "./env.ts";
import { HttpError } from "./http.ts";

export interface Claims {
  sub?: string;
  role: string;
  exp?: number;
  [key: string]: unknown;
}

let key: Uint8Array | undefined;

export async function verifyJwt(token: string): Promise<Claims> {
  key ??= new TextEncoder().encode(env().jwtSecret);
  try {
    const { payload } = await jwtVerify(token, key, { algorithms: ["HS256"] });
    if (typeof payload.role !== "string") throw new Error("no role claim");
    return payload as Claims;
  } catch {
    throw new HttpError(
      401,
      "invalid_jwt",
      "The JWT is missing, malformed, expired or not signed by this project.",
    );
  }
}

export function bearerToken(req: Request): string | undefined {
  const header = req.headers.get("authorization") ?? "";
  const match = /^Bearer\s+(\S+)$/i.exec(header);
  return match?.[1];
}

/** Supabase's verify_jwt: any valid project JWT (anon key, user, service_role). */
export async function requireJwt(req: Request): Promise<Claims> {
  const token = bearerToken(req);
  if (!token) {
    throw new HttpError(401, "missing_jwt", "An Authorization: Bearer <JWT> header is required.");
  }
  return await verifyJwt(token);
}

/** A signed-in user (role authenticated with a subject). */
export async function requireUser(req: Request): Promise<Claims & { sub: string }> {
  const claims = await requireJwt(req);
  if (claims.role !== "authenticated" || typeof claims.sub !== "string") {
    throw new HttpError(401, "user_jwt_required", "A signed-in user's JWT is required.");
  }
  return claims as Claims & { sub: string };
}

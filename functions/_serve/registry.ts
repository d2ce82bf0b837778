// The functions this project serves, with their verify_jwt setting (mirrors
// supabase/config.toml, which a test keeps in agreement).
import { handler as health } from "../health/handler.ts";
import { handler as metrics } from "../metrics/handler.ts";
import { handler as nearbyOnline } from "../nearby-online/handler.ts";
import { handler as onlineStatus } from "../online-status/handler.ts";
import { handler as presenceTicket } from "../presence-ticket/handler.ts";
import { handler as presenceWebhook } from "../presence-webhook/handler.ts";

export interface FunctionEntry {
  handler: (req: Request) => Promise<Response>;
  verifyJwt: boolean;
}

export const functions: Record<string, FunctionEntry> = {
  health: { handler: health, verifyJwt: false },
  // Authenticates itself: a signed batch (x-sltr-signature) or a user's JWT.
  "presence-webhook": { handler: presenceWebhook, verifyJwt: false },
  // A signed-in user's proof of identity for Realtime presence (refuses other roles with 401).
  "presence-ticket": { handler: presenceTicket, verifyJwt: true },
  // Prometheus metrics, service_role only (the handler refuses other roles with 403).
  metrics: { handler: metrics, verifyJwt: true },
  // Read path: a signed-in user's JWT (the handlers refuse anon and service keys with 401).
  "nearby-online": { handler: nearbyOnline, verifyJwt: true },
  "online-status": { handler: onlineStatus, verifyJwt: true },
};

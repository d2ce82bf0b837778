// POST /functions/v1/presence-ticket with a signed-in user's JWT:
// 200 {"ticket", "topic", "expires_at", "expires_in"}: the proof of identity the client puts in
// its Realtime presence payload ({user_id, proof, lat?, lng?}), which the presence bridge checks
// before it believes that presence (functions/_shared/presence_ticket.ts), and the presence
// topic to track it on (the caller's shard of SLTR_PRESENCE_TOPICS). It names the caller and
// nobody else, and lives PRESENCE_TICKET_TTL_SECONDS (default 15 minutes).
// Why presence needs a ticket: docs/realtime.md ("Presence nobody can forge").
import { requireUser } from "../_shared/auth.ts";
import { env } from "../_shared/env.ts";
import { HttpError, json, requireMethod, serveJson } from "../_shared/http.ts";
import { issueTicket, presenceTopic } from "../_shared/presence_ticket.ts";

export const handler = serveJson("presence-ticket", async (req) => {
  requireMethod(req, "POST");
  const user = await requireUser(req);
  const [secret] = env().presenceWebhookSecrets; // the newest
  if (!secret) {
    throw new HttpError(500, "not_configured", "Presence tickets are not configured.");
  }
  const ttl = env().presenceTicketTtlSeconds;
  const topic = presenceTopic(user.sub, env().presenceTopics);
  const { ticket, exp } = issueTicket(user.sub, secret, ttl, undefined, topic);
  return json({ ticket, topic, expires_at: new Date(exp * 1000).toISOString(), expires_in: ttl });
});

// Signed presence batches, as the bridge sends them (functions/_shared/auth.ts signs).
import { signBody } from "../../functions/_shared/auth.ts";
import { FUNCTIONS_URL, WEBHOOK_SECRET } from "./env.ts";

/** A batch of presence events, signed as the bridge signs it, to `${base}/presence-webhook`. */
export async function postSignedEvents(
  events: unknown[],
  base = FUNCTIONS_URL,
  secret = WEBHOOK_SECRET,
): Promise<Response> {
  const body = JSON.stringify({ events });
  return await fetch(`${base}/presence-webhook`, {
    method: "POST",
    headers: {
      "content-type": "application/json",
      "x-sltr-signature": await signBody(secret, body),
    },
    body,
  });
}

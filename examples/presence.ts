// Try presence on the local stack (make dev or make start first), exactly as an app would:
// seed user 7 signs in, tracks presence through the local Realtime endpoint, and seed user 8
// sees them in nearby-online; then user 7 closes the socket and is gone.
//   make try-presence        (or: deno run -A examples/presence.ts, with `make status` exported)
import { createSltrClient } from "../client/mod.ts";
import { localUserJwt, seedUserId } from "../scripts/token.ts";

const url = Deno.env.get("API_URL") ?? "http://127.0.0.1:54321";
const anonKey = Deno.env.get("ANON_KEY")!;
const here = { lat: 52.52, lng: 13.405 }; // Berlin Mitte, where the seed users live

const alice = seedUserId(7);
const aliceToken = await localUserJwt(alice); // what GoTrue's signInWithPassword would return
const app = createSltrClient(url, anonKey, { accessToken: () => Promise.resolve(aliceToken) });

const viewer = createSltrClient(url, anonKey, {
  accessToken: async () => await localUserJwt(seedUserId(8)),
});
const nearbyHasAlice = async () =>
  (await viewer.api.nearbyOnline({ ...here, radiusM: 5000 })).users.some((u) =>
    u.user_id === alice
  );

const started = performance.now();
await app.realtime.trackPresence(alice, here); // a ticket, then a tracked presence
while (!(await nearbyHasAlice())) await new Promise((r) => setTimeout(r, 20));
console.log(
  `seed user 7 is online and nearby for seed user 8 after ${
    (performance.now() - started).toFixed(0)
  } ms`,
);

const closed = performance.now();
const closing = app.realtime.close(); // the app goes away: it leaves and closes its socket
while (await nearbyHasAlice()) await new Promise((r) => setTimeout(r, 20));
console.log(`and gone ${(performance.now() - closed).toFixed(0)} ms after closing the socket`);
await closing;
await viewer.realtime.close();

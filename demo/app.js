// The demo page: a seed user signs in (a token minted by the local gateway: GoTrue does not run
// here), tracks presence with a ticket, shows the nearby grid from nearby-online, watches the
// users on it (watch_presence) and turns their dots green and grey from its inbox
// (presence:user:<id>). Plain JavaScript on supabase-js's browser build.
const params = new URLSearchParams(location.search);
const seed = params.get("user") ?? String(1 + Math.floor(Math.random() * 300));
const refreshMs = Number(params.get("refresh") ?? "5000");
const $ = (id) => document.getElementById(id);
const log = (msg) => {
  const line = document.createElement("div");
  line.textContent = `${new Date().toLocaleTimeString()} ${msg}`;
  $("log").prepend(line);
};

const session = await (await fetch(`/demo/session?user=${encodeURIComponent(seed)}`)).json();
const me = session.user_id;
$("me").textContent = `${session.display_name}`;
const client = globalThis.supabase.createClient(location.origin, session.anon_key, {
  accessToken: () => Promise.resolve(session.token),
  auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
});
await client.realtime.setAuth();

/** user id → {name, online, seenOfflineAt} as shown. */
const shown = new Map();

function render() {
  const grid = $("grid");
  for (const [id, u] of shown) {
    let el = grid.querySelector(`[data-user-id="${id}"]`);
    if (!el) {
      el = document.createElement("div");
      el.className = "user";
      el.dataset.userId = id;
      el.innerHTML =
        `<span class="dot"></span><span><span class="name"></span><small></small></span>`;
      grid.append(el);
    }
    el.dataset.online = String(u.online);
    el.querySelector(".name").textContent = u.name;
    el.querySelector("small").textContent = u.distance === undefined ? "" : `${u.distance} m`;
  }
  for (const el of [...grid.children]) if (!shown.has(el.dataset.userId)) el.remove();
}

function apply(changes) {
  for (const c of changes) {
    const u = shown.get(c.user_id);
    if (!u || u.online === c.is_online) continue;
    u.online = c.is_online;
    u.seenOfflineAt = c.is_online ? undefined : Date.now();
    log(`${u.name} is ${c.is_online ? "online" : "offline"}`);
  }
  render();
}

async function refresh() {
  const { data, error } = await client.functions.invoke(
    `nearby-online?lat=${session.lat}&lng=${session.lng}&radius_m=5000&limit=48`,
    { method: "GET" },
  );
  if (error) return log(`nearby-online failed: ${error.message}`);
  const now = Date.now();
  for (const u of data.users) {
    shown.set(u.user_id, {
      ...(shown.get(u.user_id) ?? {}),
      name: u.display_name,
      distance: u.distance_m,
      online: true,
      seenOfflineAt: undefined,
    });
  }
  // Keep who went offline for a while, grey, so the change can be seen.
  for (const [id, u] of shown) if (!u.online && now - u.seenOfflineAt > 30_000) shown.delete(id);
  render();
  const watched = await client.rpc("watch_presence", { user_ids: [...shown.keys()] });
  if (watched.error) log(`watch_presence failed: ${watched.error.message}`);
}

// Presence: this page is online while it is open.
async function ticket() {
  const { data, error } = await client.functions.invoke("presence-ticket", { method: "POST" });
  if (error) throw error;
  return data.ticket;
}
const presence = client.channel("online-users", {
  config: { private: true, presence: { key: me } },
});
presence.subscribe(async (status) => {
  $("status").textContent = `presence: ${status}`;
  if (status === "SUBSCRIBED") {
    const tracked = await presence.track({
      user_id: me,
      proof: await ticket(),
      lat: session.lat,
      lng: session.lng,
    });
    $("status").textContent = `presence: ${tracked === "ok" ? "online" : tracked}`;
    document.body.dataset.tracked = String(tracked === "ok");
  }
});
// Renew the ticket (15 minutes) every 10 minutes.
setInterval(
  async () =>
    presence.track({ user_id: me, proof: await ticket(), lat: session.lat, lng: session.lng }),
  10 * 60_000,
);

// The inbox: pushes, and the current status of everyone shown after every (re)join.
client.channel(`presence:user:${me}`, { config: { private: true } })
  .on("broadcast", { event: "status_changes" }, ({ payload }) => apply(payload.changes))
  .subscribe(async (status) => {
    document.body.dataset.inbox = status;
    if (status !== "SUBSCRIBED" || shown.size === 0) return;
    const { data } = await client.rpc("get_online_users_batch", { user_ids: [...shown.keys()] });
    if (data) apply(data);
  });

await refresh();
setInterval(refresh, refreshMs);
document.body.dataset.ready = "true";

// The presence bridge process: joins the Realtime presence channel as service_role and posts
// what changes to functions/presence-webhook in signed batches, until SIGTERM/SIGINT, when it
// delivers what is pending and leaves. Configuration is the environment (docs/presence-bridge.md):
//
//   SUPABASE_URL, SUPABASE_SERVICE_ROLE_KEY, PRESENCE_WEBHOOK_SECRETS      required
//     (comma-separated, newest first; PRESENCE_WEBHOOK_SECRET for one)
//   PRESENCE_WEBHOOK_URL        default $SUPABASE_URL/functions/v1/presence-webhook
//   SLTR_PRESENCE_TOPICS        default 1: presence is sharded over this many topics (the same
//                               number the presence-ticket function is given)
//   BRIDGE_TOPICS               default every shard: the shards this bridge joins, e.g. 0-9,12
//   BRIDGE_FLUSH_INTERVAL_MS    250      BRIDGE_FLUSH_AT_EVENTS      500
//   BRIDGE_MAX_BUFFERED_EVENTS  200000   BRIDGE_REFRESH_INTERVAL_MS  60000
//   BRIDGE_SHUTDOWN_GRACE_MS    10000    BRIDGE_STATS_INTERVAL_MS    60000
//   BRIDGE_REJOIN_GRACE_MS      60000: after a rejoin, leaves wait this long (clients are
//                               reconnecting, spread over 45 s)
//   BRIDGE_HEALTH_PORT          unset: no endpoint; else GET /health and /metrics on <port>
//   BRIDGE_HEALTH_HOST          0.0.0.0
//   BRIDGE_HEARTBEAT_INTERVAL_MS  realtime-js's default (25000); keep it under the server's
//                               idle timeout (hosted: 60 s)
import { createClient } from "@supabase/supabase-js";
import { presenceTopicCount, webhookSecrets } from "../../functions/_shared/env.ts";
import { presenceTopics, verifyTicket } from "../../functions/_shared/presence_ticket.ts";
import { PresenceBridge } from "./bridge.ts";
import { jsonLogger } from "./log.ts";
import { prometheusText } from "./metrics.ts";
import { WebhookSender } from "./sender.ts";
import { RealtimePresenceSource } from "./source.ts";

function required(name: string): string {
  const value = Deno.env.get(name);
  if (!value) throw new Error(`missing environment variable ${name}`);
  return value;
}

function count(name: string, fallback: number): number {
  const raw = Deno.env.get(name);
  if (raw === undefined || raw === "") return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < 0) {
    throw new Error(`${name} must be a non-negative integer, got ${raw}`);
  }
  return value;
}

/** A socket may hold this many channels on hosted Realtime (max_channels_per_client). */
const MAX_CHANNELS = 100;

/**
 * The topics this bridge joins: the shards BRIDGE_TOPICS lists ("0-9,12"; default all) of the
 * SLTR_PRESENCE_TOPICS topics. Throws on a shard that does not exist, or more topics than one
 * socket may hold.
 */
export function bridgeTopics(get: (name: string) => string | undefined): string[] {
  const all = presenceTopics(presenceTopicCount(get));
  const spec = get("BRIDGE_TOPICS")?.trim();
  let topics = all;
  if (spec) {
    const shards = new Set<number>();
    for (const part of spec.split(",").map((p) => p.trim())) {
      const m = /^(\d+)(?:-(\d+))?$/.exec(part);
      const [from, to] = m ? [Number(m[1]), Number(m[2] ?? m[1])] : [NaN, NaN];
      if (!(from <= to && to < all.length)) {
        throw new Error(`BRIDGE_TOPICS: ${part} is not a shard of 0..${all.length - 1}`);
      }
      for (let k = from; k <= to; k++) shards.add(k);
    }
    topics = [...shards].sort((a, b) => a - b).map((k) => all[k]);
  }
  if (topics.length > MAX_CHANNELS) {
    throw new Error(
      `${topics.length} topics: one socket holds ${MAX_CHANNELS} channels; split them with BRIDGE_TOPICS`,
    );
  }
  return topics;
}

export async function main(): Promise<void> {
  const log = jsonLogger;
  const supabaseUrl = required("SUPABASE_URL").replace(/\/+$/, "");
  const serviceKey = required("SUPABASE_SERVICE_ROLE_KEY");
  // Newest first: batches are signed with the newest, tickets checked against all of them.
  const secrets = webhookSecrets((name) => Deno.env.get(name));
  if (secrets.length === 0) {
    throw new Error("missing environment variable PRESENCE_WEBHOOK_SECRETS");
  }
  const secret = secrets[0];
  const webhookUrl = Deno.env.get("PRESENCE_WEBHOOK_URL") ||
    `${supabaseUrl}/functions/v1/presence-webhook`;
  const topics = bridgeTopics((name) => Deno.env.get(name));

  const bridge = new PresenceBridge({
    sender: new WebhookSender({ url: webhookUrl, secret }),
    verifyProof: (proof, nowSeconds) => verifyTicket(proof, secrets, nowSeconds),
    log,
    flushIntervalMs: count("BRIDGE_FLUSH_INTERVAL_MS", 250),
    flushAtEvents: count("BRIDGE_FLUSH_AT_EVENTS", 500),
    maxBufferedEvents: count("BRIDGE_MAX_BUFFERED_EVENTS", 200_000),
    refreshIntervalMs: count("BRIDGE_REFRESH_INTERVAL_MS", 60_000),
  });
  const supabase = createClient(supabaseUrl, serviceKey, {
    auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
    realtime: {
      ...(Deno.env.get("BRIDGE_HEARTBEAT_INTERVAL_MS")
        ? { heartbeatIntervalMs: count("BRIDGE_HEARTBEAT_INTERVAL_MS", 25_000) }
        : {}),
      logger: (kind: string, msg: string) => {
        if (kind === "error") log("warn", `realtime: ${msg}`);
      },
    },
  });
  const graceMs = count("BRIDGE_REJOIN_GRACE_MS", 60_000);
  const sources = topics.map((topic) =>
    new RealtimePresenceSource(supabase, topic, bridge.tracker, log, graceMs)
  );
  const joined = () => sources.every((s) => s.channel?.state === "joined");
  const rejoins = () => sources.reduce((n, s) => n + s.rejoins, 0);

  log("info", "starting", { topics, webhook: webhookUrl });
  bridge.start();
  for (const source of sources) {
    void source.start().then(() => log("info", "joined", { topic: source.topic }));
  }

  const statsEvery = count("BRIDGE_STATS_INTERVAL_MS", 60_000);
  const statsTimer = statsEvery > 0
    ? setInterval(
      () => log("info", "stats", { ...bridge.stats(), online: bridge.tracker.online.size }),
      statsEvery,
    )
    : undefined;

  const healthPort = Deno.env.get("BRIDGE_HEALTH_PORT");
  const healthHost = Deno.env.get("BRIDGE_HEALTH_HOST") || "0.0.0.0";
  const health = healthPort
    ? Deno.serve({ hostname: healthHost, port: Number(healthPort), onListen: () => {} }, (req) => {
      const path = new URL(req.url).pathname;
      if (path === "/metrics") {
        const text = prometheusText(
          bridge.stats(),
          bridge.tracker.online.size,
          joined(),
          rejoins(),
        );
        return new Response(text, {
          headers: { "content-type": "text/plain; version=0.0.4" },
        });
      }
      if (path !== "/health") return new Response("not found", { status: 404 });
      const body = {
        joined: joined(),
        topics: Object.fromEntries(sources.map((s) => [s.topic, s.channel?.state === "joined"])),
        rejoins: rejoins(),
        online: bridge.tracker.online.size,
        heldLeaves: bridge.tracker.heldLeaves,
        ...bridge.stats(),
      };
      return Response.json(body, { status: body.joined ? 200 : 503 });
    })
    : undefined;

  const stopped = Promise.withResolvers<void>();
  let stopping = false;
  const shutdown = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    log("info", "shutting down", { signal, pending: bridge.buffer.size });
    clearInterval(statsTimer);
    await Promise.all(
      sources.map((source) =>
        source.stop().catch((e) =>
          log("warn", "leaving the channel failed", { topic: source.topic, error: String(e) })
        )
      ),
    );
    await bridge.stop(count("BRIDGE_SHUTDOWN_GRACE_MS", 10_000));
    await supabase.realtime.disconnect();
    await health?.shutdown();
    log("info", "stopped", bridge.stats());
    stopped.resolve();
  };
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    Deno.addSignalListener(signal, () => void shutdown(signal));
  }
  await stopped.promise;
}

if (import.meta.main) {
  try {
    await main();
    Deno.exit(0);
  } catch (e) {
    jsonLogger("error", "fatal", { error: e instanceof Error ? e.message : String(e) });
    Deno.exit(1);
  }
}

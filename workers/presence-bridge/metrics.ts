// The bridge's figures in Prometheus text format (GET /metrics on BRIDGE_HEALTH_PORT).
import type { BridgeStats } from "./bridge.ts";

export function prometheusText(
  stats: BridgeStats,
  online: number,
  joined: boolean,
  rejoins = 0,
): string {
  const lines: string[] = [];
  const metric = (name: string, kind: string, help: string, samples: [string, number][]) => {
    lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${kind}`);
    for (const [labels, value] of samples) lines.push(`${name}${labels} ${value}`);
  };
  metric("sltr_bridge_joined", "gauge", "1 while the presence channel is joined.", [
    ["", joined ? 1 : 0],
  ]);
  metric(
    "sltr_bridge_rejoins_total",
    "counter",
    "New presence channels joined after the server closed one.",
    [["", rejoins]],
  );
  metric("sltr_bridge_users_online", "gauge", "Users present with a valid ticket.", [
    ["", online],
  ]);
  metric(
    "sltr_bridge_presences_rejected_total",
    "counter",
    "Presence metas ignored: bad key, another user's key or ticket, missing, invalid or " +
      "expired ticket.",
    Object.entries(stats.rejected).map(([reason, n]) => [`{reason="${reason}"}`, n]),
  );
  const counters: [keyof BridgeStats, string][] = [
    ["received", "Events produced from presence."],
    ["sent", "Events delivered to the webhook."],
    ["accepted", "Events the webhook accepted."],
    ["ignored", "Events the webhook ignored (not newer than what it holds)."],
    ["requests", "Webhook requests made."],
    ["retries", "Webhook requests retried."],
    ["dropped", "Events dropped because the webhook refused them alone."],
    ["shedSuperseded", "Pending events shed because a newer one of the user superseded them."],
    ["shedOnline", "Pending online events shed because the buffer was full."],
  ];
  for (const [key, help] of counters) {
    const snake = key.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
    metric(`sltr_bridge_events_${snake}_total`, "counter", help, [["", stats[key] as number]]);
  }
  metric("sltr_bridge_events_pending", "gauge", "Events waiting for delivery.", [
    ["", stats.pending],
  ]);
  return lines.join("\n") + "\n";
}

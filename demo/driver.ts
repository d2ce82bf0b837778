// The demo driver: keeps the seed alive. A few hundred seed users come online and go offline
// through the real path (the client module on the local Realtime endpoint, the bridge, the
// webhook), on sessions of a few minutes, so the demo page and nearby-online are never empty.
//   make demo              (foreground; make dev starts it in the background)
//   DEMO_USERS=200 DEMO_ONLINE_RATIO=0.35 deno run -A demo/driver.ts
import postgres from "postgres";
import { createSltrClient, type SltrClient } from "../client/mod.ts";
import { localUserJwt, seedUserId } from "../scripts/token.ts";

const API_URL = Deno.env.get("API_URL") ?? "http://127.0.0.1:54321";
const ANON_KEY = Deno.env.get("ANON_KEY") ?? Deno.env.get("SUPABASE_ANON_KEY")!;

/** One seed user the driver moves. */
export class DemoUser {
  private app?: SltrClient;

  constructor(
    readonly n: number,
    readonly id: string,
    readonly where: { lat: number; lng: number },
    private readonly url = API_URL,
  ) {}

  get isOnline(): boolean {
    return this.app !== undefined;
  }

  /** Opens a socket and tracks presence, as the app does when it comes to the foreground. */
  async online(): Promise<void> {
    if (this.app) return;
    const token = await localUserJwt(this.id);
    const app = createSltrClient(this.url, ANON_KEY, {
      accessToken: () => Promise.resolve(token),
      auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
    });
    this.app = app;
    try {
      await app.realtime.trackPresence(this.id, this.where);
    } catch (e) {
      this.app = undefined;
      await app.realtime.close().catch(() => {});
      throw e;
    }
  }

  /** Closes the socket, as the app does when it goes away. */
  async offline(): Promise<void> {
    const app = this.app;
    this.app = undefined;
    await app?.realtime.close();
  }
}

/** The seed users 1..n with where they are. */
export async function seedUsers(dbUrl: string, n: number, url = API_URL): Promise<DemoUser[]> {
  const sql = postgres(dbUrl, { max: 1, onnotice: () => {} });
  try {
    const ids = Array.from({ length: n }, (_, i) => seedUserId(i + 1));
    const rows = await sql<{ id: string; lat: number | null; lng: number | null }[]>`
      select id, latitude as lat, longitude as lng from public.profiles where id = any (${ids})`;
    const byId = new Map(rows.map((r) => [r.id, r]));
    return ids.flatMap((id, i) => {
      const r = byId.get(id);
      return r ? [new DemoUser(i + 1, id, { lat: r.lat ?? 52.52, lng: r.lng ?? 13.405 }, url)] : [];
    });
  } finally {
    await sql.end();
  }
}

const between = (lo: number, hi: number) => lo + Math.random() * (hi - lo);

async function main(): Promise<void> {
  const count = Number(Deno.env.get("DEMO_USERS") ?? "200");
  const ratio = Number(Deno.env.get("DEMO_ONLINE_RATIO") ?? "0.35");
  // Seed users from 101 on: the first hundred are left for people trying the page by hand.
  const users = (await seedUsers(Deno.env.get("DB_URL")!, Math.min(300, count + 100))).slice(100);
  console.log(JSON.stringify({ msg: "demo driver", users: users.length, online_ratio: ratio }));
  let stopping = false;
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    Deno.addSignalListener(signal, () => {
      stopping = true;
      void Promise.all(users.map((u) => u.offline().catch(() => {}))).then(() => Deno.exit(0));
    });
  }
  // Sessions average ~3 minutes online; offline long enough to keep `ratio` online.
  const onlineS = [60, 300] as const;
  const mean = (onlineS[0] + onlineS[1]) / 2;
  const offlineMean = (mean * (1 - ratio)) / ratio;
  await Promise.all(users.map(async (u) => {
    let on = Math.random() < ratio;
    // Spread the first joins over a minute (the endpoint's joins/s, and a calm start).
    await new Promise((r) => setTimeout(r, Math.random() * 60_000));
    while (!stopping) {
      try {
        if (on) await u.online();
        else await u.offline();
      } catch (e) {
        console.error(JSON.stringify({ msg: "demo user failed", n: u.n, error: String(e) }));
      }
      const seconds = on ? between(...onlineS) : between(offlineMean / 2, offlineMean * 1.5);
      await new Promise((r) => setTimeout(r, seconds * 1000));
      on = !on;
    }
  }));
}

if (import.meta.main) await main();

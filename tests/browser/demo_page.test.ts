// The demo page in a real browser (Debian's chromium, driven by playwright-core): it signs in as
// a seed user, shows the nearby grid, and a dot turns grey within a second when the demo
// driver takes that user offline, and green again when they come back.
import assert from "node:assert/strict";
import { chromium } from "playwright-core";
import { DemoUser, seedUsers } from "../../demo/driver.ts";
import { API_URL, DB_URL } from "../_lib/env.ts";
import { eventually, test } from "../_lib/harness.ts";

const CHROMIUM = Deno.env.get("CHROMIUM_PATH") ?? "/usr/bin/chromium";

test("a_dot_changes_colour_when_the_driver_flips_that_user", async () => {
  // Seed users 1 (the viewer) and 2 (the one flipped): the background driver leaves 1-100 alone.
  const [viewer, subject] = await seedUsers(DB_URL, 2);
  const profile = await Deno.makeTempDir({ prefix: "sltr-chromium-" });
  // A fresh profile (playwright passes it as --user-data-dir) and no background networking:
  // this machine's network is closed.
  const browser = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
    ],
  });
  // The subject stands where the viewer is: the nearest, so on the viewer's grid.
  const user = new DemoUser(2, subject.id, viewer.where);
  try {
    const page = await browser.newPage();
    const errors: string[] = [];
    page.on("pageerror", (e) => errors.push(String(e)));
    await page.goto(`${API_URL}/demo/?user=1&refresh=500`);
    await page.waitForSelector('body[data-ready="true"][data-tracked="true"]', { timeout: 15_000 });
    await page.waitForSelector('body[data-inbox="SUBSCRIBED"]', { timeout: 15_000 });

    await user.online();
    const dot = `[data-user-id="${subject.id}"]`;
    await page.waitForSelector(`${dot}[data-online="true"]`, { timeout: 10_000 });

    const started = performance.now();
    await user.offline();
    await page.waitForSelector(`${dot}[data-online="false"]`, { timeout: 5_000 });
    const grey = performance.now() - started;
    console.log(`offline -> grey dot: ${grey.toFixed(0)} ms`);
    assert.ok(grey < 1000, `${grey} ms`);

    await user.online();
    await page.waitForSelector(`${dot}[data-online="true"]`, { timeout: 5_000 });
    // The dot itself is green (after its 0.2 s transition).
    const colour = () =>
      page.$eval(
        `${dot} .dot`,
        // Runs in the page, where getComputedStyle exists.
        (el) =>
          (globalThis as unknown as { getComputedStyle(e: unknown): { backgroundColor: string } })
            .getComputedStyle(el).backgroundColor,
      );
    await eventually(async () => await colour() === "rgb(46, 204, 64)", "the dot is green", 2000);
    await eventually(() => errors.length === 0, "no page errors", 1);
  } finally {
    await user.offline();
    await browser.close();
    await Deno.remove(profile, { recursive: true }).catch(() => {});
  }
});

// The Deno test wrapper of the suites that talk to the stack, and waiting for things.

/** A test whose pools, sockets and clients live across tests of its file (closed by its last
 * test) or leave a timer behind (realtime-js on disconnect): Deno's op and resource sanitizers
 * off, everything opened closed in a finally or a teardown test. */
export function test(name: string, fn: (t: Deno.TestContext) => Promise<void>): void {
  Deno.test({ name, fn, sanitizeOps: false, sanitizeResources: false });
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Resolves once `check` holds; fails after `timeoutMs` naming `what`. */
export async function eventually(
  check: () => boolean | Promise<boolean>,
  what: string,
  timeoutMs = 5000,
): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > until) throw new Error(`timed out waiting for: ${what}`);
    await sleep(10);
  }
}

// Free TCP ports on loopback, for servers a test or benchmark starts of its own.

/** `n` distinct free ports (nothing listens on them once returned). */
export function freePorts(n: number): number[] {
  const listeners = Array.from(
    { length: n },
    () => Deno.listen({ hostname: "127.0.0.1", port: 0 }),
  );
  const ports = listeners.map((l) => (l.addr as Deno.NetAddr).port);
  for (const l of listeners) l.close();
  return ports;
}

/** One free port. */
export function freePort(): number {
  return freePorts(1)[0];
}

// A TCP proxy on loopback that a test can freeze: while frozen it forwards nothing in either
// direction and closes nothing, as a phone that walked out of coverage (the way to make a
// server notice a lost client only by its own timeout), or a database that stopped answering.

export class FreezableProxy {
  readonly port: number;
  private readonly listener: Deno.Listener;
  private frozen = false;
  private readonly conns = new Set<Deno.Conn>();

  constructor(private readonly targetPort: number) {
    this.listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    this.port = (this.listener.addr as Deno.NetAddr).port;
    void this.accept();
  }

  private async accept(): Promise<void> {
    for await (const client of this.listener) {
      void Deno.connect({ hostname: "127.0.0.1", port: this.targetPort }).then((server) => {
        this.conns.add(client).add(server);
        void this.pipe(client, server);
        void this.pipe(server, client);
      }, () => client.close());
    }
  }

  private async pipe(from: Deno.Conn, to: Deno.Conn): Promise<void> {
    const buf = new Uint8Array(64 * 1024);
    try {
      for (;;) {
        const n = await from.read(buf);
        if (n === null) break;
        while (this.frozen) await new Promise((r) => setTimeout(r, 50));
        let off = 0;
        while (off < n) off += await to.write(buf.subarray(off, n));
      }
    } catch { /* closed */ }
    for (const c of [from, to]) {
      try {
        c.close();
      } catch { /* already closed */ }
      this.conns.delete(c);
    }
  }

  /** Stop forwarding (nothing is closed). */
  freeze(): void {
    this.frozen = true;
  }

  /** Forward again what waited. */
  thaw(): void {
    this.frozen = false;
  }

  close(): void {
    this.listener.close();
    for (const c of this.conns) {
      try {
        c.close();
      } catch { /* already closed */ }
    }
    this.conns.clear();
  }
}

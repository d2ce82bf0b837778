// Tenant-wide rates measured the way hosted Realtime measures them (supabase/realtime
// lib/realtime/rate_counter/rate_counter.ex, tenants.ex *_per_second_rate): events are counted
// into a bucket that closes every 5 s; the average is the sum of the last 12 buckets divided by
// their span; the limit is "triggered" when a tick finds the measurement at or above it and
// released when a later tick finds it under (maybe_trigger_limit/1). A burst is therefore judged
// over up to a minute, and a limit takes effect only at the next tick. Some counters measure the
// sum of their buckets instead (the authorization errors: 1 s ticks, 30 buckets).

export class RateCounter {
  private current = 0;
  private readonly buckets: number[] = [];
  avg = 0;
  sum = 0;
  triggered = false;

  constructor(
    readonly limit: number,
    readonly tickMs = 5000,
    readonly maxBuckets = 12,
    readonly measurement: "avg" | "sum" = "avg",
  ) {}

  add(n = 1): void {
    this.current += n;
  }

  /** Closes the current bucket (the server calls this every tickMs). */
  tick(): void {
    this.buckets.unshift(this.current);
    this.current = 0;
    if (this.buckets.length > this.maxBuckets) this.buckets.length = this.maxBuckets;
    this.sum = this.buckets.reduce((a, b) => a + b, 0);
    this.avg = this.sum / this.buckets.length / (this.tickMs / 1000);
    const value = this.measurement === "sum" ? this.sum : this.avg;
    this.triggered = value >= this.limit;
  }
}

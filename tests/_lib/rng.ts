// A seeded PRNG (mulberry32): the same seed gives the same sequence, so a benchmark loads the
// same users every run and a fuzz run replays from its printed seed.

/** Numbers in [0, 1), deterministic for a seed. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * Helpers to run two operations against each other in a chosen or a random
 * order: a seeded random source, and a store delay that makes each store call
 * wait a random number of event-loop turns, so that the operations' store
 * calls interleave differently from one iteration to the next.
 */
import type { FaultyStore } from './faulty-store.js';

/** A small seeded PRNG (mulberry32): the same seed gives the same interleaving. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export async function turns(n: number): Promise<void> {
  for (let i = 0; i < n; i++) await new Promise<void>((resolve) => setImmediate(resolve));
}

/** Makes every store call wait 0 … `max` event-loop turns, drawn from `random`. Returns a function that stops it. */
export function shuffleStoreCalls(store: FaultyStore, random: () => number, max = 3): () => void {
  store.delay = () => turns(Math.floor(random() * (max + 1)));
  return () => {
    store.delay = null;
  };
}

export type Order = 'worker_first' | 'admin_first' | 'random';

/** Iteration `i` of a race: both fixed orders first, then random interleavings. */
export function orderOf(i: number): Order {
  return i === 0 ? 'worker_first' : i === 1 ? 'admin_first' : 'random';
}

export type Settled<T> = { ok: true; value: T } | { ok: false; error: unknown };

export async function settle<T>(p: Promise<T>): Promise<Settled<T>> {
  try {
    return { ok: true, value: await p };
  } catch (error) {
    return { ok: false, error };
  }
}

/** The error code of a settled call (`ok` when it succeeded). */
export function codeOf(result: Settled<unknown>): string {
  if (result.ok) return 'ok';
  const code = (result.error as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : `thrown: ${String(result.error)}`;
}

/**
 * Runs `worker` and `admin` in the given order, or (random) concurrently with
 * shuffled store calls and a random head start for one of them.
 */
export async function race<A>(
  order: Order,
  store: FaultyStore,
  random: () => number,
  worker: () => Promise<void>,
  admin: () => Promise<A>,
): Promise<Settled<A>> {
  if (order === 'worker_first') {
    await worker();
    return settle(admin());
  }
  if (order === 'admin_first') {
    const result = await settle(admin());
    await worker();
    return result;
  }
  const stop = shuffleStoreCalls(store, random);
  try {
    const lead = Math.floor(random() * 4);
    const adminFirst = random() < 0.5;
    const first = adminFirst ? settle(admin()) : worker().then(() => null);
    await turns(lead);
    const second = adminFirst ? worker().then(() => null) : settle(admin());
    const [a, b] = await Promise.all([first, second]);
    return (adminFirst ? a : b) as Settled<A>;
  } finally {
    stop();
  }
}

/**
 * The group-commit queue on its own: when batches start, what each takes,
 * and that every call is settled. A batch runner here records its batch and
 * ends when the test lets it.
 */
import { describe, expect, it } from 'vitest';
import { GroupCommitQueue, type BatchEntry } from '../../src/stores/kysely/kysely-group-commit.js';

interface Entry extends BatchEntry {
  readonly done: Promise<unknown>;
}

/** A queue whose batches stay open until `finish(i)` ends the i-th (0-based), settling each call with its key. */
function harness(maxBatch: number, maxConcurrent: number) {
  const batches: string[][] = [];
  const enders: (() => void)[] = [];
  const queue = new GroupCommitQueue<Entry>(
    maxBatch,
    (batch) =>
      new Promise<void>((resolve) => {
        batches.push(batch.map((e) => e.key));
        enders.push(() => {
          for (const entry of batch) entry.resolve(entry.key);
          resolve();
        });
      }),
    maxConcurrent,
  );
  const call = (key: string): Promise<unknown> => {
    let entry!: Entry;
    const done = new Promise<unknown>((resolve, reject) => {
      entry = { key, resolve, reject, done: undefined as never };
    });
    queue.push({ ...entry, done });
    return done;
  };
  /** Lets pending microtasks (the queue starts batches in one) and promise callbacks run. */
  const settle = () => new Promise((r) => setTimeout(r, 0));
  return { batches, call, settle, finish: (i: number) => enders[i]!(), pending: () => queue.pending };
}

describe('GroupCommitQueue', () => {
  it('starts a batch at once when none runs, with every call made together', async () => {
    const q = harness(8, 4);
    const calls = ['a', 'b', 'c'].map(q.call);
    await q.settle();
    expect(q.batches).toEqual([['a', 'b', 'c']]);
    q.finish(0);
    expect(await Promise.all(calls)).toEqual(['a', 'b', 'c']);
  });

  it('starts a batch beside running ones only once half a batch waits; fewer wait until none runs', async () => {
    const q = harness(8, 4);
    const first = q.call('a');
    await q.settle();
    expect(q.batches).toEqual([['a']]);
    // Three calls (under half of 8) wait while the first batch runs.
    const waiting = ['b', 'c', 'd'].map(q.call);
    await q.settle();
    expect(q.batches).toHaveLength(1);
    expect(q.pending()).toBe(3);
    // The fourth makes half a batch: a second batch starts beside the first with all four.
    const fourth = q.call('e');
    await q.settle();
    expect(q.batches).toEqual([['a'], ['b', 'c', 'd', 'e']]);
    // With two batches running, two more calls wait, still while one of them runs, and start when none does.
    const late = ['f', 'g'].map(q.call);
    await q.settle();
    expect(q.batches).toHaveLength(2);
    q.finish(0);
    await q.settle();
    expect(q.batches).toHaveLength(2);
    q.finish(1);
    await q.settle();
    expect(q.batches[2]).toEqual(['f', 'g']);
    q.finish(2);
    expect(await Promise.all([first, ...waiting, fourth, ...late])).toEqual(['a', 'b', 'c', 'd', 'e', 'f', 'g']);
  });

  it('keeps a call on a key in a running batch for a later batch, in arrival order', async () => {
    const q = harness(2, 2);
    const a1 = q.call('a');
    await q.settle();
    // Half of 2 is one call: another batch may start beside the first, but not with the busy key.
    const a2 = q.call('a');
    const b = q.call('b');
    await q.settle();
    expect(q.batches).toEqual([['a'], ['b']]);
    q.finish(0);
    await q.settle();
    expect(q.batches[2]).toEqual(['a']);
    q.finish(1);
    q.finish(2);
    expect(await Promise.all([a1, a2, b])).toEqual(['a', 'a', 'b']);
  });
});

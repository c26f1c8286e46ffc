/**
 * The sender of a store's notifications: one send at a time, a send that
 * starts after every wake and that the wake waits for, and failures reported
 * without stopping later sends.
 */
import { describe, expect, it } from 'vitest';
import { WakeSender } from '../../src/stores/kysely/pg-wake-sender.js';

/** A send whose calls the test ends one by one; `events` records wakes, send starts and ends in order. */
function controlledSend() {
  const events: string[] = [];
  const waiting: { end: () => void; fail: (error: Error) => void }[] = [];
  let started = 0;
  const send = () => {
    const n = ++started;
    events.push(`start ${n}`);
    return new Promise<void>((resolve, reject) => {
      waiting.push({
        end: () => {
          events.push(`end ${n}`);
          resolve();
        },
        fail: (error) => {
          events.push(`fail ${n}`);
          reject(error);
        },
      });
    });
  };
  /** Ends the oldest send on its way, and lets the sender react. */
  const next = async (outcome: 'end' | Error = 'end') => {
    const call = waiting.shift();
    if (!call) throw new Error('no send on its way');
    if (outcome === 'end') call.end();
    else call.fail(outcome);
    for (let i = 0; i < 5; i++) await Promise.resolve();
  };
  return { send, events, next, started: () => started, onItsWay: () => waiting.length };
}

describe('WakeSender', () => {
  it('sends at once when nothing is on its way, and not again for one wake', async () => {
    const c = controlledSend();
    const sender = new WakeSender(c.send, () => undefined);
    void sender.wake();
    expect(c.events).toEqual(['start 1']);
    await c.next();
    await sender.idle();
    expect(c.events).toEqual(['start 1', 'end 1']);
    expect(c.onItsWay()).toBe(0);
  });

  it('folds the wakes made while a send is on its way into one send that starts after it ends', async () => {
    const c = controlledSend();
    const sender = new WakeSender(c.send, () => undefined);
    void sender.wake();
    for (let i = 0; i < 10; i++) {
      c.events.push('wake');
      void sender.wake();
    }
    // One send at a time.
    expect(c.started()).toBe(1);
    await c.next();
    expect(c.events.slice(-2)).toEqual(['end 1', 'start 2']);
    expect(c.started()).toBe(2);
    // A wake during the second send: a third, after it; none during the third: no fourth.
    c.events.push('wake');
    void sender.wake();
    await c.next();
    await c.next();
    await sender.idle();
    expect(c.started()).toBe(3);
    // Every wake is followed by the start of a send.
    const lastWake = c.events.lastIndexOf('wake');
    expect(c.events.slice(lastWake + 1).some((e) => e.startsWith('start'))).toBe(true);
    expect(c.events).toEqual(['start 1', ...Array(10).fill('wake'), 'end 1', 'start 2', 'wake', 'end 2', 'start 3', 'end 3']);
  });

  it('resolves each wake once a send that started after it has ended, failed or not, and never rejects', async () => {
    const c = controlledSend();
    const sender = new WakeSender(c.send, () => undefined);
    const settled: string[] = [];
    const first = sender.wake().then(() => settled.push('first'));
    const second = sender.wake().then(() => settled.push('second'));
    const third = sender.wake().then(() => settled.push('third'));
    await c.next();
    await first;
    // The first send started before the second and third wakes: they wait for the next one.
    expect(settled).toEqual(['first']);
    expect(c.events).toEqual(['start 1', 'end 1', 'start 2']);
    await c.next(new Error('the connection was lost'));
    await Promise.all([second, third]);
    expect(settled).toEqual(['first', 'second', 'third']);
    await sender.idle();
    expect(c.onItsWay()).toBe(0);
  });

  it('reports a failed send and keeps sending; a throwing error handler stops nothing', async () => {
    const c = controlledSend();
    const errors: string[] = [];
    const sender = new WakeSender(c.send, (error) => {
      errors.push(error.message);
      throw new Error('the handler throws');
    });
    void sender.wake();
    void sender.wake();
    await c.next(new Error('permission denied for function pg_notify'));
    // The wake made while the failed send was on its way still gets its send.
    expect(c.started()).toBe(2);
    await c.next();
    await sender.idle();
    expect(errors).toEqual(['permission denied for function pg_notify']);
    void sender.wake();
    expect(c.started()).toBe(3);
    await c.next();
    await sender.idle();
    expect(c.events).toEqual(['start 1', 'fail 1', 'start 2', 'end 2', 'start 3', 'end 3']);
  });

  it('turns a thrown non-error into an error for the handler', async () => {
    const errors: Error[] = [];
    const sender = new WakeSender(() => Promise.reject('down'), (error) => errors.push(error));
    void sender.wake();
    await sender.idle();
    expect(errors.map((e) => [e instanceof Error, e.message])).toEqual([[true, 'down']]);
  });

  it('idle() waits for the send that a wake made while another was on its way', async () => {
    const c = controlledSend();
    const sender = new WakeSender(c.send, () => undefined);
    void sender.wake();
    void sender.wake();
    let idle = false;
    const done = sender.idle().then(() => (idle = true));
    await c.next();
    expect(idle).toBe(false);
    await c.next();
    await done;
    expect(c.events).toEqual(['start 1', 'end 1', 'start 2', 'end 2']);
  });
});

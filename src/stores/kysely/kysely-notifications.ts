/**
 * Wake-ups across processes on Postgres: `LISTEN` on a dedicated client of
 * the host's, and the channel that the store's writes `pg_notify`.
 *
 * @module
 */

import type { SubscribeOptions } from '../../storage/workflow-store.js';

/** A notification as `pg` delivers it. */
export interface PgNotification {
  channel: string;
  payload?: string | undefined;
}

/**
 * What the store needs of the client it listens on: the shape of a connected
 * `pg.Client` (declared here so that the store does not depend on `pg`).
 */
export interface PgListenClient {
  /** Runs one SQL statement (`LISTEN "…"`, `UNLISTEN "…"`). */
  query(text: string): Promise<unknown>;
  on(event: 'notification', listener: (message: PgNotification) => void): unknown;
  removeListener(event: 'notification', listener: (message: PgNotification) => void): unknown;
}

/**
 * A connection the store opens itself for `LISTEN` (see
 * `notifications.connect`): a connected `pg.Client`. The store ends it when
 * the last subscriber leaves, and opens another when its connection is lost.
 */
export interface PgListenConnection extends PgListenClient {
  on(event: 'notification', listener: (message: PgNotification) => void): unknown;
  on(event: 'error', listener: (err: Error) => void): unknown;
  on(event: 'end', listener: () => void): unknown;
  removeListener(event: 'notification', listener: (message: PgNotification) => void): unknown;
  removeListener(event: 'error', listener: (err: Error) => void): unknown;
  removeListener(event: 'end', listener: () => void): unknown;
  end(): Promise<void>;
}

/** Reconnection after a lost `LISTEN` connection: the first attempt after this long, doubling up to {@link RECONNECT_MAX_MS}. */
const RECONNECT_FIRST_MS = 100;
const RECONNECT_MAX_MS = 30_000;

/** Postgres truncates longer identifiers, and `pg_notify` rejects longer channels. */
const MAX_CHANNEL_LENGTH = 63;

/**
 * The channel of a store's tables: `<prefix>wake`, plus `_<schema>` when the
 * tables live in a named schema (a hash of it when the schema name is long or
 * not a plain identifier), so that stores over different tables do not wake
 * each other.
 */
export function notificationChannel(prefix: string, schema: string | undefined): string {
  const base = `${prefix}wake`;
  if (schema === undefined) return base;
  const plain = `${base}_${schema}`;
  if (/^[A-Za-z0-9_]+$/.test(schema) && plain.length <= MAX_CHANNEL_LENGTH) return plain;
  return `${base}_${hash(schema)}`;
}

/** 64 bits of FNV-1a, as hex: enough to keep schemas apart in a channel name. */
function hash(text: string): string {
  let a = 0x811c9dc5;
  let b = 0x01000193 ^ text.length;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    a = Math.imul(a ^ c, 0x01000193);
    b = Math.imul(b ^ c, 0x01000193) ^ (a >>> 13);
  }
  return (a >>> 0).toString(16).padStart(8, '0') + (b >>> 0).toString(16).padStart(8, '0');
}

/** A failed `LISTEN` on a connection whose loss the subscribers were already told of: not reported again. */
class ToldLoss extends Error {
  constructor(cause: unknown) {
    super(cause instanceof Error ? cause.message : String(cause), { cause });
  }
}

/**
 * The listening side: one `LISTEN` while at least one listener is
 * subscribed. Listeners are called for notifications on this channel only
 * (the client may carry others), and a throwing listener does not stop the
 * rest.
 *
 * On a client of the host's (`notifications.listen`) it runs `LISTEN` and
 * `UNLISTEN` as subscriptions come and go, and never connects or ends the
 * client. With a `connect` function of the host's, it opens its own
 * connection for the first subscriber and ends it after the last; when that
 * connection is lost it wakes every listener (work made due meanwhile went
 * unheard), and opens another, retrying with backoff, waking them again once
 * it listens. Subscribers hear of the loss and of each failed attempt
 * through their `onError`, and of the return through `onResume`.
 */
export class PgWakeups {
  /** Each subscription's listener and options (a wrapper per subscription: the same function subscribed twice needs two unsubscribes). */
  private readonly listeners = new Map<() => void, SubscribeOptions>();
  /** Subscriptions told of a loss (`onError`) and not yet of the return (`onResume`). */
  private readonly interrupted = new Set<() => void>();
  /** The host's client (`notifications.listen`): never connected, ended or replaced here. */
  private readonly hostClient: PgListenClient | null;
  /** Opens a connection of our own (`notifications.connect`). */
  private readonly connect: (() => Promise<PgListenConnection>) | null;
  /** Our own connection, while one is open. */
  private connection: PgListenConnection | null = null;
  private listening = false;
  /** LISTEN / UNLISTEN, connecting and ending run one at a time, in the order subscriptions change. */
  private queue: Promise<void> = Promise.resolve();
  private reconnectTimer: ReturnType<typeof setTimeout> | null = null;
  private reconnectDelayMs = RECONNECT_FIRST_MS;
  private readonly onNotification = (message: PgNotification): void => {
    if (message.channel === this.channel) this.wakeAll();
  };
  /** A lost connection of our own: its `error` or `end`, whichever comes first. */
  private readonly onLostError = (err: Error): void => this.lost(err);
  private readonly onLostEnd = (): void => this.lost(new Error('the LISTEN connection ended'));

  constructor(
    source: { listen: PgListenClient } | { connect: () => Promise<PgListenConnection> },
    readonly channel: string,
  ) {
    this.hostClient = 'listen' in source ? source.listen : null;
    this.connect = 'connect' in source ? source.connect : null;
  }

  /**
   * Calls `listener` on each notification of the channel until the returned
   * function is called. With a `connect` function, a connection that cannot
   * be opened now is retried in the background (the listener is called once
   * it listens), so this fails only on a host's client.
   */
  async subscribe(listener: () => void, options: SubscribeOptions = {}): Promise<() => Promise<void>> {
    const entry = (): void => listener();
    this.listeners.set(entry, options);
    try {
      await this.sync();
    } catch (err) {
      if (this.connect) {
        if (!(err instanceof ToldLoss)) this.report(err);
        this.scheduleReconnect();
      } else {
        this.listeners.delete(entry);
        await this.sync().catch(() => undefined);
        throw err;
      }
    }
    let done = false;
    return async () => {
      if (done) return;
      done = true;
      this.listeners.delete(entry);
      this.interrupted.delete(entry);
      if (this.listeners.size === 0) this.cancelReconnect();
      await this.sync();
    };
  }

  private wakeAll(): void {
    for (const listener of [...this.listeners.keys()]) {
      try {
        listener();
      } catch {
        // A wake-up is a hint: one listener's failure must not keep it from the others.
      }
    }
  }

  /** Tells every subscriber that wake-ups stopped, or did not resume. */
  private report(err: unknown): void {
    const error = err instanceof Error ? err : new Error(String(err));
    for (const [entry, options] of [...this.listeners]) {
      this.interrupted.add(entry);
      try {
        options.onError?.(error);
      } catch {
        // Reporting must not break the recovery.
      }
    }
  }

  /** Tells the subscribers that were told wake-ups had stopped that they work again. */
  private resumed(): void {
    for (const entry of [...this.interrupted]) {
      this.interrupted.delete(entry);
      try {
        this.listeners.get(entry)?.onResume?.();
      } catch {
        // As in report.
      }
    }
  }

  /** Brings LISTEN (and, with `connect`, the connection) in line with whether anyone is subscribed. */
  private sync(): Promise<void> {
    const next = this.queue.then(async () => {
      const want = this.listeners.size > 0;
      if (want === this.listening) return;
      const quoted = `"${this.channel.replace(/"/g, '""')}"`;
      if (want) {
        const client = this.hostClient ?? this.connection ?? (await this.open());
        client.on('notification', this.onNotification);
        try {
          await client.query(`LISTEN ${quoted}`);
        } catch (err) {
          client.removeListener('notification', this.onNotification);
          // Our connection was lost while LISTEN ran: `lost` has already released it and told the subscribers.
          const told = this.hostClient === null && this.connection !== client;
          await this.release();
          throw told ? new ToldLoss(err) : err;
        }
        this.listening = true;
      } else {
        this.listening = false;
        if (this.hostClient) {
          // The host's client stays, without our listener and our LISTEN.
          this.hostClient.removeListener('notification', this.onNotification);
          await this.hostClient.query(`UNLISTEN ${quoted}`);
        } else {
          // Our own connection ends, and its LISTEN with it.
          await this.release();
        }
      }
    });
    this.queue = next.catch(() => undefined);
    return next;
  }

  /** Opens a connection of our own and watches it for loss. */
  private async open(): Promise<PgListenClient> {
    if (!this.connect) throw new Error('PgWakeups: no client to listen on');
    const connection = await this.connect();
    connection.on('error', this.onLostError);
    connection.on('end', this.onLostEnd);
    this.connection = connection;
    return connection;
  }

  /** Stops watching our connection and ends it (its errors ignored: it may be lost already). */
  private async release(): Promise<void> {
    const connection = this.connection;
    this.connection = null;
    if (!connection) return;
    connection.removeListener('error', this.onLostError);
    connection.removeListener('end', this.onLostEnd);
    connection.removeListener('notification', this.onNotification);
    await connection.end().catch(() => undefined);
  }

  private lost(err: Error): void {
    if (!this.connection) return;
    this.listening = false;
    void this.release();
    this.report(err);
    // Work made due since the connection went may have gone unheard.
    this.wakeAll();
    this.scheduleReconnect();
  }

  private scheduleReconnect(): void {
    if (this.reconnectTimer || this.listeners.size === 0) return;
    const timer = setTimeout(() => {
      this.reconnectTimer = null;
      this.sync().then(
        () => {
          this.reconnectDelayMs = RECONNECT_FIRST_MS;
          if (!this.listening) return;
          this.resumed();
          this.wakeAll();
        },
        (err: unknown) => {
          this.reconnectDelayMs = Math.min(this.reconnectDelayMs * 2, RECONNECT_MAX_MS);
          if (!(err instanceof ToldLoss)) this.report(err);
          this.scheduleReconnect();
        },
      );
    }, this.reconnectDelayMs);
    (timer as { unref?: () => void }).unref?.();
    this.reconnectTimer = timer;
  }

  private cancelReconnect(): void {
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
  }
}

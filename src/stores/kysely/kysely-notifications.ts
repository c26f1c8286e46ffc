/**
 * Wake-ups across processes on Postgres: `LISTEN` on a dedicated client of
 * the host's, and the channel that the store's writes `pg_notify`.
 *
 * @module
 */

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

/**
 * The listening side: one `LISTEN` on the host's client while at least one
 * listener is subscribed, `UNLISTEN` when the last one leaves. Listeners are
 * called for notifications on this channel only (the client may carry
 * others), and a throwing listener does not stop the rest.
 */
export class PgWakeups {
  private readonly listeners = new Set<() => void>();
  private listening = false;
  /** LISTEN / UNLISTEN run one at a time, in the order subscriptions change. */
  private queue: Promise<void> = Promise.resolve();
  private readonly onNotification = (message: PgNotification): void => {
    if (message.channel !== this.channel) return;
    for (const listener of [...this.listeners]) {
      try {
        listener();
      } catch {
        // A wake-up is a hint: one listener's failure must not keep it from the others.
      }
    }
  };

  constructor(
    private readonly client: PgListenClient,
    readonly channel: string,
  ) {}

  /** Calls `listener` on each notification of the channel until the returned function is called. */
  async subscribe(listener: () => void): Promise<() => Promise<void>> {
    // A wrapper per subscription, so that subscribing the same function twice needs two unsubscribes.
    const entry = (): void => listener();
    this.listeners.add(entry);
    try {
      await this.sync();
    } catch (err) {
      this.listeners.delete(entry);
      await this.sync().catch(() => undefined);
      throw err;
    }
    let done = false;
    return async () => {
      if (done) return;
      done = true;
      this.listeners.delete(entry);
      await this.sync();
    };
  }

  /** Brings LISTEN in line with whether anyone is subscribed. */
  private sync(): Promise<void> {
    const next = this.queue.then(async () => {
      const want = this.listeners.size > 0;
      if (want === this.listening) return;
      const quoted = `"${this.channel.replace(/"/g, '""')}"`;
      if (want) {
        this.client.on('notification', this.onNotification);
        try {
          await this.client.query(`LISTEN ${quoted}`);
        } catch (err) {
          this.client.removeListener('notification', this.onNotification);
          throw err;
        }
        this.listening = true;
      } else {
        this.listening = false;
        this.client.removeListener('notification', this.onNotification);
        await this.client.query(`UNLISTEN ${quoted}`);
      }
    });
    this.queue = next.catch(() => undefined);
    return next;
  }
}

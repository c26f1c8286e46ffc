/**
 * One engine process of the multi-process Postgres run, forked by the bench
 * (`bench/multi-process.ts`). It runs a worker against the shared database and
 * reports completions to the parent over IPC; the parent starts the workflows.
 *
 * Messages in: `start` (open a pool and start a worker, on a store with or
 * without group commit, and with or without `LISTEN/NOTIFY` wake-ups on a
 * connection the store opens, as the message says), `mark` (count statements and
 * CPU time from here), `stop` (stop the worker, close the pool, report the
 * statements sent and the CPU time since `start` or `mark`). The process exits when
 * the parent goes away.
 */
import pg from 'pg';
import { createEngine, type WorkflowEngine } from '../src/index.js';
import { KyselyWorkflowStore } from '../src/kysely.js';
import { ownCpuMs } from './cpu.js';
import { benchLogger } from './logger.js';
import { openPostgres } from './postgres.js';
import { diffCounts, NO_STATEMENTS, StatementCounter, type StatementCounts } from './statement-counter.js';
import { benchWorkflow } from './workload.js';
import type { ParentMessage, WorkerMessage } from './worker-protocol.js';

let current: {
  engine: WorkflowEngine;
  close: () => Promise<void>;
  counter: StatementCounter;
  cpuAtStart: number;
  statementsAtStart: StatementCounts;
} | null = null;

function send(message: WorkerMessage): void {
  if (process.connected) process.send?.(message);
}

async function start(message: Extract<ParentMessage, { type: 'start' }>): Promise<void> {
  if (current) throw new Error('already started');
  const counter = new StatementCounter();
  const { db, close } = openPostgres(message.url, message.poolSize, counter.log);
  // With `notify`, the store opens its LISTEN connection through this (and ends it when the worker stops).
  let listen: pg.Client | null = null;
  const connect = async (): Promise<pg.Client> => {
    const client = new pg.Client({ connectionString: message.url });
    // A lost connection (the server stopping on Ctrl-C) must not crash the process; the store sees it end.
    client.on('error', () => undefined);
    await client.connect();
    listen = client;
    return client;
  };
  const engine = createEngine({
    store: new KyselyWorkflowStore({ db, groupCommit: message.groupCommit, ...(message.notify ? { notifications: { connect } } : {}) }),
    workflows: [benchWorkflow],
    concurrency: message.concurrency,
    idlePollMs: message.idlePollMs,
    shutdownTimeoutMs: 5_000,
    logger: benchLogger,
  });
  engine.events.on('workflow:completed', (e) => send({ type: 'completed', workflowId: e.workflowId }));
  engine.events.on('workflow:failed', (e) => send({ type: 'failed', workflowId: e.workflowId, reason: `${e.error.code}: ${e.error.message}` }));
  current = { engine, close, counter, cpuAtStart: ownCpuMs(), statementsAtStart: NO_STATEMENTS };
  engine.startWorker();
  // The worker subscribes as it starts; report ready once LISTEN is in place, so that no wake-up of the run is missed.
  if (message.notify) await listening(() => listen);
  send({ type: 'ready' });
}

const LISTEN_TIMEOUT_MS = 10_000;

async function listening(client: () => pg.Client | null): Promise<void> {
  const deadline = Date.now() + LISTEN_TIMEOUT_MS;
  for (;;) {
    const current = client();
    if (current && (await current.query<{ c: string }>('select pg_listening_channels() as c')).rows.length > 0) return;
    if (Date.now() > deadline) throw new Error(`the worker did not LISTEN within ${LISTEN_TIMEOUT_MS} ms`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

async function stop(): Promise<void> {
  const running = current;
  current = null;
  if (!running) {
    send({ type: 'stopped', statements: NO_STATEMENTS, cpuMs: 0 });
    return;
  }
  await running.engine.stop();
  const cpuMs = ownCpuMs() - running.cpuAtStart;
  const statements = diffCounts(running.counter.snapshot(), running.statementsAtStart);
  await running.close();
  send({ type: 'stopped', statements, cpuMs });
}

function mark(): void {
  if (!current) throw new Error('not started');
  current.cpuAtStart = ownCpuMs();
  current.statementsAtStart = current.counter.snapshot();
  send({ type: 'marked' });
}

process.on('message', (raw: unknown) => {
  const message = raw as ParentMessage;
  const handled = message.type === 'start' ? start(message) : message.type === 'mark' ? Promise.resolve().then(mark) : stop();
  handled.catch((err: unknown) => send({ type: 'error', message: err instanceof Error ? (err.stack ?? err.message) : String(err) }));
});

// The parent decides when to stop; a Ctrl-C in the terminal reaches it too, and it stops this process.
process.on('SIGINT', () => undefined);
process.on('disconnect', () => process.exit(0));
send({ type: 'spawned' });

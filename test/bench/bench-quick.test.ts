import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import type { BenchResults } from '../../bench/results.js';

/**
 * A short pass of `npm run bench` (built as the script builds it): every
 * store and kind of run completes and is counted (the reference loop's
 * too), and the one goal that is a count rather than a rate holds: at most 7
 * write transactions per 5-step workflow at 1 client. Rates are not checked here (see the README's
 * Performance section): the machines are shared.
 */
const run = promisify(execFile);
const root = join(import.meta.dirname, '..', '..');
const dir = mkdtempSync(join(tmpdir(), 'sagaline-bench-test-'));

afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('npm run bench, a short pass', () => {
  it('runs every store and prints and writes every run, with at most 7 write transactions per workflow at 1 client', async () => {
    await run('npx', ['tsup', '--config', 'bench/tsup.bench.ts', '--silent'], { cwd: root });
    const json = join(dir, 'results.json');
    const stores = ['memory', 'sqlite', 'sqlite-group', 'postgres', 'postgres-group'];
    const { stdout } = await run(
      process.execPath,
      [
        '.bench-dist/run.js',
        '--quick',
        '--stores',
        stores.join(','),
        '--clients',
        '1,4',
        '--processes',
        '2',
        '--workflows',
        '30',
        '--warmup',
        '5',
        '--engine-warmup',
        '10',
        '--baseline-seconds',
        '0.2',
        '--json',
        json,
      ],
      { cwd: root, maxBuffer: 16 * 1024 * 1024 },
    );
    const results = JSON.parse(readFileSync(json, 'utf8')) as BenchResults;
    expect(results.failures).toEqual([]);

    // One run per store and client count in one process, and per Postgres kind and client count in two processes.
    const expected = [
      ...stores.flatMap((store) => [1, 4].map((clients) => `${store}/1/${clients}`)),
      ...['postgres', 'postgres-group'].flatMap((store) => [1, 4].map((clients) => `${store}/2/${clients}`)),
    ];
    expect(results.runs.map((r) => `${r.store}/${r.processes}/${r.clients}`).sort()).toEqual(expected.sort());
    for (const r of results.runs) {
      expect(r.workflows).toBe(30);
      expect(r.workflowsPerSec).toBeGreaterThan(0);
      expect(r.latency.count).toBe(30);
      expect(stdout).toContain(`| sagaline: ${r.label} `);
      // The machine's idle share during the run, read from /proc/stat (Linux, as on the machines this runs on).
      expect(r.cpu.machineIdle, r.label).toBeGreaterThanOrEqual(0);
      expect(r.cpu.machineIdle, r.label).toBeLessThanOrEqual(1);
    }
    expect(stdout).toContain('| CPU idle |');
    // The multi-process runs' workers learn of new workflows from LISTEN/NOTIFY by default, polling at the engine's default as the fallback.
    for (const r of results.runs.filter((run) => run.processes > 1)) expect(r.settings, r.label).toMatchObject({ notify: true, idlePollMs: 1000 });
    expect(results.options.wakeups).toBe('notify');

    // Every raw baseline was measured, before and after.
    for (const set of [results.baselines, results.baselines.atEnd]) {
      expect(set?.sqlite?.commitsPerSec).toBeGreaterThan(0);
      expect(set?.postgres1?.commitsPerSec).toBeGreaterThan(0);
      expect(set?.postgres8?.commitsPerSec).toBeGreaterThan(0);
      expect(set?.postgres8?.cpu.machineIdle).toBeGreaterThanOrEqual(0);
      expect(set?.postgres8?.cpu.machineIdle).toBeLessThanOrEqual(1);
    }

    // The reference loop ran on Postgres at each client count, in every mode, and wrote what it should:
    // one upsert per transition sends 7 statements per workflow and commits each on its own; sagaline's
    // statements replayed are as many as the store sends for a workflow, each its own commit.
    const references = results.references ?? [];
    expect(references.map((r) => `${r.mode}/${r.clients}`).sort()).toEqual(['batched/1', 'batched/4', 'each/1', 'each/4', 'statements/1', 'statements/4']);
    for (const r of references) {
      expect(r.workflows, r.label).toBe(30);
      expect(r.latency.count, r.label).toBe(30);
      expect(r.baseline?.stepsPerSecRatio, r.label).toBeGreaterThan(0);
      expect(stdout).toContain(`| reference: ${r.label} `);
      if (r.mode === 'each') {
        expect(r.statementsPerWorkflow, r.label).toBe(7);
        expect(r.transactions.writePerWorkflow, r.label).toBeGreaterThanOrEqual(7);
        expect(r.transactions.writePerWorkflow, r.label).toBeLessThan(7.5);
      } else if (r.mode === 'statements') {
        // The store's create and its five compare-and-set writes, as the sagaline runs count them.
        expect(r.statementsPerWorkflow, r.label).toBe(6);
        expect(r.transactions.writePerWorkflow, r.label).toBeGreaterThanOrEqual(6);
        expect(r.transactions.writePerWorkflow, r.label).toBeLessThan(6.5);
      } else {
        expect(r.statementsPerWorkflow, r.label).toBeGreaterThan(0);
        expect(r.statementsPerWorkflow, r.label).toBeLessThanOrEqual(7);
      }
    }

    // Each step's result is committed on its own at 1 client (at least 5 write transactions), and the
    // start with its first step claimed takes one more: within the goal of 7.
    const sqlOneClient = results.runs.filter((r) => r.store !== 'memory' && r.processes === 1 && r.clients === 1);
    expect(sqlOneClient).toHaveLength(4);
    for (const r of sqlOneClient) {
      expect(r.transactions, r.label).not.toBeNull();
      expect(r.transactions!.writePerWorkflow, r.label).toBeGreaterThanOrEqual(5);
      expect(r.transactions!.writePerWorkflow, r.label).toBeLessThanOrEqual(7);
    }
  }, 240_000);
});

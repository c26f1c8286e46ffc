/**
 * `npm run demo`, as the README has a user run it: the demo starts, seeds its
 * workflows on its SQLite file, serves the API, and the commands it prints
 * work; a second demo on the same port says why it cannot start and leaves
 * the first one's file alone; Ctrl-C stops it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { freePort } from '../support/postgres-global-setup.js';
import { waitFor } from './process-harness.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const DEMO = join(root, 'examples', 'provision-service.ts');
/** `tsx`'s loader as `--import tsx` finds it from the project's root, where `npm run demo` runs. */
const TSX_LOADER = pathToFileURL(join(root, 'node_modules', 'tsx', 'dist', 'loader.mjs')).href;

interface Demo {
  child: ChildProcess;
  output: () => string;
  exited: Promise<number | null>;
}

/**
 * Starts the demo as `npm run demo` does: one Node process with `tsx`'s
 * loader (`--import tsx`), in a process group of its own, so that a signal
 * for the group reaches it as Ctrl-C in a terminal does.
 */
function startDemo(cwd: string, port: number): Demo {
  const child = spawn(process.execPath, ['--import', TSX_LOADER, DEMO], {
    cwd,
    env: { ...process.env, PORT: String(port) },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  let output = '';
  child.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString('utf8')));
  child.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString('utf8')));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return { child, output: () => output, exited };
}

/** Sends `signal` to the demo's process group; false once the group is gone. */
function signalDemo(demo: Demo, signal: NodeJS.Signals): boolean {
  try {
    process.kill(-demo.child.pid!, signal);
    return true;
  } catch {
    return false;
  }
}

describe('npm run demo', () => {
  const cleanups: (() => Promise<void> | void)[] = [];
  afterEach(async () => {
    while (cleanups.length) await cleanups.pop()!();
  });

  it('seeds its workflows, serves the commands it prints, refuses a second demo on its port, and stops on Ctrl-C', async () => {
    const cwd = mkdtempSync(join(tmpdir(), 'sagaline-demo-'));
    cleanups.push(() => rmSync(cwd, { recursive: true, force: true }));
    const port = await freePort();
    const demo = startDemo(cwd, port);
    cleanups.push(() => void signalDemo(demo, 'SIGKILL'));
    await waitFor(() => demo.output().includes('Press Ctrl-C to stop.') || demo.child.exitCode !== null, 'the demo to start', 60_000);
    expect(demo.child.exitCode, demo.output()).toBeNull();
    const out = demo.output();
    expect(out).toContain(`sagaline demo listening on http://127.0.0.1:${port}`);

    const base = `http://127.0.0.1:${port}/api/v1`;
    const token = /Admin token: (\S+)/.exec(out)![1]!;
    const admin = { authorization: `Bearer ${token}` };
    const list = async () => (await (await fetch(`${base}/admin/provisioning/workflows`, { headers: admin })).json()) as { data: { id: string; tenant_id: string; status: string }[] };
    const seeded = (await list()).data;
    expect(seeded.map((w) => `${w.tenant_id}:${w.status}`).sort()).toEqual(['acme:completed', 'globex:failed', 'initech:running', 'initech:running']);

    // The printed callback command completes the workflow initech waits on.
    const callback = /-d '(\{"callback_token"[^']*)' '([^']+)'/.exec(out)!;
    expect(callback[2]).toBe(`${base}/provisioning/callback`);
    const delivered = await fetch(callback[2]!, { method: 'POST', headers: { 'content-type': 'application/json' }, body: callback[1] });
    expect(delivered.status).toBe(200);
    const waitingId = /\/provisioning\/workflows\/(wf_\w+)\/force-complete/.exec(out)![1]!;
    const completedIds = async () => (await list()).data.filter((w) => w.tenant_id === 'initech' && w.status === 'completed' && w.id !== waitingId);
    await waitFor(async () => (await completedIds()).length === 1, 'the called-back workflow to complete', 60_000);

    // A second demo on the same port stops before touching the first one's file.
    const second = startDemo(cwd, port);
    cleanups.push(() => void signalDemo(second, 'SIGKILL'));
    expect(await second.exited).toBe(1);
    expect(second.output()).toContain(`Cannot listen on 127.0.0.1:${port}: the port is in use`);
    expect((await list()).data).toHaveLength(4);

    // Ctrl-C.
    expect(signalDemo(demo, 'SIGINT')).toBe(true);
    expect(await demo.exited).toBe(0);
    expect(demo.output()).toContain('Stopped.');
  });
});

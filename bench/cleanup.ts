/**
 * Cleanup for the bench: every resource it creates (the Postgres server, temp
 * dirs, worker processes, pools) registers how to release it here. Cleanups run
 * last-registered first, when the bench ends, on Ctrl-C (SIGINT), SIGTERM or
 * SIGHUP, and on an uncaught error. Temp dirs are also removed synchronously on
 * process exit, so even a forced exit (a second Ctrl-C) leaves nothing behind.
 */
import { rmSync } from 'node:fs';

type CleanupFn = () => Promise<void> | void;

interface Entry {
  name: string;
  fn: CleanupFn;
}

const entries: Entry[] = [];
const tempDirs = new Set<string>();
let running: Promise<void> | null = null;
let installed = false;

/** True once cleanup has begun: errors from connections being torn down are expected then. */
export function shuttingDown(): boolean {
  return running !== null;
}

/** How long one cleanup may take before the next one runs anyway. */
const CLEANUP_STEP_TIMEOUT_MS = 25_000;

/** Registers a cleanup; the returned function runs it now (once) and unregisters it. */
export function onCleanup(name: string, fn: CleanupFn): () => Promise<void> {
  const entry: Entry = { name, fn };
  entries.push(entry);
  let done: Promise<void> | null = null;
  return () => {
    const index = entries.indexOf(entry);
    if (index >= 0) entries.splice(index, 1);
    done ??= Promise.resolve().then(fn);
    return done;
  };
}

/** A temp dir removed at exit whatever happens (synchronously, in the `exit` handler). */
export function trackTempDir(path: string): void {
  tempDirs.add(path);
}

/** Removes a tracked temp dir now (retrying while a process that is exiting still writes into it). */
export function removeTempDir(path: string): void {
  rmSync(path, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 });
  tempDirs.delete(path);
}

/** Runs every registered cleanup (last first), each bounded in time; errors are reported, not thrown. */
export function runCleanups(): Promise<void> {
  running ??= (async () => {
    while (entries.length > 0) {
      const entry = entries.pop()!;
      let timer: ReturnType<typeof setTimeout> | undefined;
      try {
        await Promise.race([
          Promise.resolve().then(entry.fn),
          new Promise<void>((_, reject) => {
            timer = setTimeout(() => reject(new Error(`timed out after ${CLEANUP_STEP_TIMEOUT_MS} ms`)), CLEANUP_STEP_TIMEOUT_MS);
          }),
        ]);
      } catch (err) {
        console.error(`bench: cleanup "${entry.name}" failed: ${err instanceof Error ? err.message : String(err)}`);
      } finally {
        if (timer) clearTimeout(timer);
      }
    }
    for (const dir of tempDirs) removeTempDir(dir);
  })();
  return running;
}

/**
 * Installs the signal and exit handlers: a signal runs the cleanups and exits
 * with 128 + the signal number; a second signal exits at once (temp dirs are
 * still removed by the `exit` handler).
 */
export function installCleanupHandlers(): void {
  if (installed) return;
  installed = true;
  const codes: Partial<Record<NodeJS.Signals, number>> = { SIGINT: 130, SIGTERM: 143, SIGHUP: 129 };
  let signalled = false;
  for (const [signal, code] of Object.entries(codes) as [NodeJS.Signals, number][]) {
    process.on(signal, () => {
      if (signalled) {
        console.error(`\nbench: ${signal} again, exiting now`);
        process.exit(code);
      }
      signalled = true;
      console.error(`\nbench: ${signal}, stopping and cleaning up…`);
      void runCleanups().finally(() => process.exit(code));
    });
  }
  process.on('uncaughtException', (err) => {
    if (shuttingDown()) return;
    console.error(`bench: unexpected error: ${err.stack ?? err.message}`);
    void runCleanups().finally(() => process.exit(1));
  });
  process.on('exit', () => {
    for (const dir of tempDirs) {
      try {
        rmSync(dir, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 });
      } catch {
        // nothing more can be done while exiting
      }
    }
  });
}

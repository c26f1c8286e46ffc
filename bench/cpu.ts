/**
 * CPU time spent during a run: this process (`process.cpuUsage()`), the
 * Postgres server (the postmaster and all its processes, from `/proc`), and
 * the whole machine's idle time (`/proc/stat`). On a machine with few cores
 * this says whether a run was CPU-bound, and where.
 */
import { readdirSync, readFileSync } from 'node:fs';

/** CPU milliseconds (user + system) of this process so far. */
export function ownCpuMs(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
}

/** The machine's CPU time in ticks, all cores together: idle (and waiting for I/O), and in all. */
export interface MachineTicks {
  idle: number;
  total: number;
}

/** The first line of `/proc/stat`; null where it is not readable (not Linux). */
export function machineTicks(): MachineTicks | null {
  try {
    const line = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0] ?? '';
    if (!line.startsWith('cpu ')) return null;
    // user nice system idle iowait irq softirq steal (guest time is counted in user already).
    const f = line.trim().split(/\s+/).slice(1, 9).map(Number);
    if (f.length < 8 || f.some((n) => !Number.isFinite(n))) return null;
    return { idle: f[3]! + f[4]!, total: f.reduce((a, b) => a + b, 0) };
  } catch {
    return null;
  }
}

/** The share of the machine's CPU time that was idle between two readings (null without both, or no time between). */
export function idleShare(before: MachineTicks | null, after: MachineTicks | null): number | null {
  if (!before || !after || after.total <= before.total) return null;
  return (after.idle - before.idle) / (after.total - before.total);
}

/** Clock ticks per second of `/proc/<pid>/stat` times (USER_HZ, 100 on Linux). */
const TICKS_PER_SECOND = 100;

interface ProcStat {
  pid: number;
  ppid: number;
  /** utime + stime, in ticks. */
  own: number;
  /** cutime + cstime: children that exited and were waited for, in ticks. */
  reaped: number;
}

function readStat(pid: string): ProcStat | null {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the command name, which is in parentheses and may contain spaces.
    const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
    const n = (i: number): number => Number(fields[i - 3]);
    return { pid: Number(pid), ppid: n(4), own: n(14) + n(15), reaped: n(16) + n(17) };
  } catch {
    return null;
  }
}

/**
 * CPU milliseconds of a process tree: the root's own and reaped children's
 * time, plus the time of its live descendants. Null where `/proc` is not
 * readable (not Linux).
 */
export function processTreeCpuMs(rootPid: number): number | null {
  let entries: string[];
  try {
    entries = readdirSync('/proc').filter((e) => /^\d+$/.test(e));
  } catch {
    return null;
  }
  const stats = entries.map(readStat).filter((s): s is ProcStat => s !== null);
  const children = new Map<number, ProcStat[]>();
  for (const s of stats) {
    let list = children.get(s.ppid);
    if (!list) children.set(s.ppid, (list = []));
    list.push(s);
  }
  const root = stats.find((s) => s.pid === rootPid);
  if (!root) return null;
  let ticks = root.own + root.reaped;
  const stack = [...(children.get(rootPid) ?? [])];
  while (stack.length > 0) {
    const s = stack.pop()!;
    ticks += s.own;
    stack.push(...(children.get(s.pid) ?? []));
  }
  return (ticks * 1000) / TICKS_PER_SECOND;
}

/** CPU times at one moment: this process, the Postgres server (when its pid is known), and the machine. */
export interface CpuReading {
  nodeMs: number;
  postgresMs: number | null;
  machine: MachineTicks | null;
}

export function readCpu(serverPid: number | null): CpuReading {
  return { nodeMs: ownCpuMs(), postgresMs: serverPid === null ? null : processTreeCpuMs(serverPid), machine: machineTicks() };
}

/** CPU used between two readings. */
export interface CpuUse {
  nodeMs: number;
  postgresMs: number | null;
  /** The share of the machine's CPU time that was idle, all cores together. */
  machineIdle: number | null;
}

export function cpuBetween(before: CpuReading, after: CpuReading): CpuUse {
  return {
    nodeMs: after.nodeMs - before.nodeMs,
    postgresMs: after.postgresMs !== null && before.postgresMs !== null ? after.postgresMs - before.postgresMs : null,
    machineIdle: idleShare(before.machine, after.machine),
  };
}

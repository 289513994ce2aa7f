import { readFileSync } from 'node:fs';

const TICKS = 100; // USER_HZ on Linux

/** CPU seconds (user + system) a process has used so far, from /proc/PID/stat; NaN if unavailable. */
export function processCpuSeconds(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // after "pid (comm) ": state=0 … utime=11 stime=12 cutime=13 cstime=14
    return (Number(fields[11]) + Number(fields[12]) + Number(fields[13]) + Number(fields[14])) / TICKS;
  } catch {
    return Number.NaN;
  }
}

/** Idle and total CPU time of the whole machine so far (all cores), in ticks, from /proc/stat. */
export function machineCpuTicks(): { idle: number; total: number } {
  try {
    const f = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0]!.trim().split(/\s+/).slice(1).map(Number);
    // user nice system idle iowait irq softirq steal …
    return { idle: f[3]! + (f[4] ?? 0), total: f.slice(0, 8).reduce((s, x) => s + x, 0) };
  } catch {
    return { idle: Number.NaN, total: Number.NaN };
  }
}

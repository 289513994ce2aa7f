import type { ChildProcess } from 'node:child_process';

/** True while `child` was spawned and has not exited. */
export function isAlive(child: ChildProcess): boolean {
  return child.pid !== undefined && child.exitCode === null && child.signalCode === null;
}

/** Resolves true once `child` has exited, false if `ms` pass first (Infinity: waits for the exit). */
export function exitWithin(child: ChildProcess, ms: number): Promise<boolean> {
  if (!isAlive(child)) return Promise.resolve(true);
  return new Promise((resolve) => {
    const onExit = () => { if (timer) clearTimeout(timer); resolve(true); };
    const timer = Number.isFinite(ms) ? setTimeout(() => { child.off('exit', onExit); resolve(false); }, ms) : null;
    child.once('exit', onExit);
  });
}

/**
 * How `endProcess` ended a child: it exited after `signal`, it needed SIGKILL, or it is still
 * alive after SIGKILL too (uninterruptible sleep, e.g. stuck in the kernel on a dead device).
 */
export type EndOutcome = 'exited' | 'killed' | 'alive';

/**
 * Stops a child process, bounded in time: sends `signal` (SIGTERM), waits up to `graceMs`, then
 * SIGKILLs it and waits up to `killWaitMs` more. `signal` 'SIGKILL' skips the grace period.
 */
export async function endProcess(child: ChildProcess, signal: NodeJS.Signals = 'SIGTERM', graceMs = 5000, killWaitMs = 5000): Promise<EndOutcome> {
  if (!isAlive(child)) return 'exited';
  if (signal !== 'SIGKILL') {
    child.kill(signal);
    if (await exitWithin(child, graceMs)) return 'exited';
  }
  child.kill('SIGKILL');
  if (await exitWithin(child, killWaitMs)) return signal === 'SIGKILL' ? 'exited' : 'killed';
  return 'alive';
}

/**
 * Stops a child process: sends `signal` (SIGTERM), waits up to `graceMs` for it to exit, then
 * SIGKILLs it. Resolves with its exit code (null when a signal ended it); at once if it already
 * exited.
 */
export async function stopProcess(child: ChildProcess, signal: NodeJS.Signals = 'SIGTERM', graceMs = 5000): Promise<number | null> {
  await endProcess(child, signal, graceMs, Infinity);
  return child.exitCode;
}

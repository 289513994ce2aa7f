import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';

/**
 * Stops a child process: sends `signal` (SIGTERM), waits up to `graceMs` for it to exit, then
 * SIGKILLs it. Resolves with its exit code (null when a signal ended it); at once if it already
 * exited.
 */
export async function stopProcess(child: ChildProcess, signal: NodeJS.Signals = 'SIGTERM', graceMs = 5000): Promise<number | null> {
  if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
  const exited = once(child, 'exit');
  child.kill(signal);
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
  const [code] = (await exited) as [number | null];
  clearTimeout(timer);
  return code;
}

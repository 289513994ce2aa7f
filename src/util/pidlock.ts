/**
 * A pid lock file: `<lockPath>` is created exclusively and holds the owner's pid and start time. A
 * lock left by a dead process (kill -9), or by a process whose pid was since reused, is taken over;
 * one held by a live process is not. The caller turns the outcome into its own error.
 */
import { closeSync, openSync, readFileSync, writeSync } from 'node:fs';
import { readFile, unlink } from 'node:fs/promises';

export type PidLockOutcome =
  | { taken: true }
  /** A live process holds it. */
  | { taken: false; heldBy: number }
  /** Taken over three times and lost the race each time. */
  | { taken: false; heldBy: null };

/**
 * Tries to take the lock. Resolves with the outcome; rejects with the file system's error when the
 * lock file cannot be created for another reason than existing (missing directory, permissions).
 */
export async function acquirePidLock(lockPath: string): Promise<PidLockOutcome> {
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const fd = openSync(lockPath, 'wx', 0o600);
      writeSync(fd, `${process.pid} ${processStartTime(process.pid) ?? ''}\n`);
      closeSync(fd);
      return { taken: true };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    const [pidText, startText] = (await readFile(lockPath, 'utf8').catch(() => '')).trim().split(/\s+/);
    const pid = Number.parseInt(pidText ?? '', 10);
    // Same pid but another start time: the owner died and its pid was reused; the lock is stale.
    const sameProcess = !startText || processStartTime(pid) === null || processStartTime(pid) === startText;
    if (Number.isInteger(pid) && pid > 0 && pidAlive(pid) && sameProcess) return { taken: false, heldBy: pid };
    await unlink(lockPath).catch(() => undefined);
  }
  return { taken: false, heldBy: null };
}

/** Gives the lock up (a missing lock file is not an error). */
export async function releasePidLock(lockPath: string): Promise<void> {
  await unlink(lockPath).catch(() => undefined);
}

/** Start time of a process in clock ticks since boot (/proc/PID/stat field 22), or null if unknown. */
function processStartTime(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) may contain spaces and parentheses: count fields after the last ')'.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? null;
  } catch {
    return null;
  }
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

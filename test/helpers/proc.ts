import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { once } from 'node:events';
import { stopProcess } from '../../src/util/process.js';

/**
 * Child processes started by a test. Every process is killed (by pid, SIGKILL after a grace period)
 * by `stopAll`, which tests register with `t.teardown` so that nothing outlives a failing test.
 */
export class Procs {
  private readonly children = new Set<ChildProcess>();

  spawn(cmd: string, args: string[], opts: SpawnOptions = {}): ChildProcess {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], ...opts });
    this.children.add(child);
    child.once('exit', () => this.children.delete(child));
    return child;
  }

  /** Sends `signal`, waits up to `graceMs`, then SIGKILLs. */
  stop(child: ChildProcess, signal: NodeJS.Signals = 'SIGTERM', graceMs = 5000): Promise<number | null> {
    return stopProcess(child, signal, graceMs);
  }

  async stopAll(): Promise<void> {
    await Promise.all([...this.children].map((c) => this.stop(c, 'SIGTERM', 3000)));
  }
}

/** Collects a stream's text; `wait(re)` resolves with the first match (rejects on timeout or exit). */
export function watchOutput(child: ChildProcess, stream: 'stdout' | 'stderr' = 'stdout') {
  let text = '';
  const waiters: Array<() => void> = [];
  child[stream]?.setEncoding('utf8');
  child[stream]?.on('data', (d: string) => { text += d; for (const w of waiters.splice(0)) w(); });
  return {
    get text() { return text; },
    wait(re: RegExp, timeoutMs = 20000): Promise<RegExpMatchArray> {
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`timeout waiting for ${re} in ${stream}: ${text.slice(-2000)}`)), timeoutMs);
        const onExit = () => { clearTimeout(timer); reject(new Error(`process exited waiting for ${re}: ${text.slice(-2000)}`)); };
        const check = () => {
          const m = text.match(re);
          if (m) { clearTimeout(timer); child.off('exit', onExit); resolve(m); } else waiters.push(check);
        };
        child.once('exit', onExit);
        check();
      });
    },
  };
}

/** Runs a command to completion and returns its output (never throws on a non-zero exit). */
export async function runCmd(cmd: string, args: string[], opts: SpawnOptions & { input?: string | Buffer; timeoutMs?: number } = {}):
  Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }> {
  const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'], ...opts });
  let stdout = '';
  let stderr = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => { stdout += d; });
  child.stderr!.setEncoding('utf8').on('data', (d: string) => { stderr += d; });
  child.stdin!.on('error', () => {});
  child.stdin!.end(opts.input ?? '');
  const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 120000);
  const [code, signal] = (await once(child, 'exit')) as [number | null, NodeJS.Signals | null];
  clearTimeout(timer);
  return { code, signal, stdout, stderr };
}

/**
 * Command line that runs `cmd` inside the named network namespace and nothing else.
 * `ip netns exec` also makes a private copy of the mount table for the child; a filesystem that another
 * test mounts meanwhile then lives on in that copy after its umount (e2fsck: "in use"). nsenter --net
 * joins only the network namespace, and execs, so the pid is the command's own.
 */
export function netnsCommand(ns: string, cmd: string, args: readonly string[]): [string, string[]] {
  return ['nsenter', [`--net=/run/netns/${ns}`, '--', cmd, ...args]];
}

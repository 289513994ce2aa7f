/**
 * The GMD process under the agent: `georm gmd run <gmd> --cluster-managed`, started detached in
 * its own session (Pacemaker does not keep an agent's children; there is no systemd unit to ask
 * in a namespace node), with a pid file and a log file in the machine's run_dir, and ended by pid.
 */
import { spawn } from 'node:child_process';
import { openSync, closeSync, readFileSync, writeFileSync, rmSync, mkdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { callControl } from '../../gmd/control.js';
import { controlSocketPath } from '../../gmd/runner.js';
import { findMachine, type ClusterConfig } from '../../gmd/cluster-config.js';
import { GeormError } from '../../util/errors.js';

/** bin/georm.js of this installation (this file runs from dist/src/hageo/agent/). */
export const GEORM_ENTRY = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', '..', 'bin', 'georm.js');

export interface GmdProcessPaths { control: string; pidFile: string; logFile: string }

export function processPaths(cfg: ClusterConfig, gmd: string, machine: string): GmdProcessPaths {
  const runDir = findMachine(cfg, machine).runDir;
  return { control: controlSocketPath(cfg, gmd, machine), pidFile: join(runDir, `${gmd}.pid`), logFile: join(runDir, `${gmd}.log`) };
}

/** The pid in the pid file when that process is alive, else null (a stale pid file is removed). */
export function livePid(p: GmdProcessPaths): number | null {
  let pid: number;
  try { pid = Number(readFileSync(p.pidFile, 'utf8').trim()); } catch { return null; }
  if (!Number.isInteger(pid) || pid <= 1) { rmSync(p.pidFile, { force: true }); return null; }
  if (!alive(pid)) { rmSync(p.pidFile, { force: true }); return null; }
  // A reused pid is not ours: the command line must be a gmd run.
  let cmdline = '';
  try { cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8'); } catch { return null; }
  if (!cmdline.includes('\0gmd\0run\0')) { rmSync(p.pidFile, { force: true }); return null; }
  return pid;
}

function alive(pid: number): boolean {
  try { process.kill(pid, 0); return true; } catch (e) { return (e as NodeJS.ErrnoException).code === 'EPERM'; }
}

/** One control request; null when no process listens (not running). */
export async function control(p: GmdProcessPaths, op: string, args: Record<string, unknown> = {}, timeoutMs = 10000): Promise<unknown> {
  return callControl(p.control, op, args, timeoutMs);
}

export async function answers(p: GmdProcessPaths): Promise<boolean> {
  try { await control(p, 'status', {}, 5000); return true; } catch (e) {
    if (e instanceof GeormError && e.code === 'GMD_ERR_NOT_RUNNING') return false;
    throw e;
  }
}

/** Starts the GMD process and waits until its control socket answers. */
export async function launch(p: GmdProcessPaths, gmd: string, config: string, machine: string, timeoutMs = 30000): Promise<number> {
  mkdirSync(dirname(p.pidFile), { recursive: true });
  const log = openSync(p.logFile, 'a');
  const child = spawn(process.execPath, [GEORM_ENTRY, 'gmd', 'run', gmd, '--config', config, '--machine', machine, '--cluster-managed'], {
    detached: true, stdio: ['ignore', log, log], cwd: '/', env: { ...process.env, GEORM_MACHINE: machine },
  });
  closeSync(log);
  const pid = child.pid;
  if (pid === undefined) throw new GeormError('HAGEO_ERR_LAUNCH', `could not start 'georm gmd run ${gmd}'`);
  let exited: number | string | null = null;
  child.on('exit', (code, sig) => { exited = code ?? sig ?? 'unknown'; });
  child.unref();
  writeFileSync(p.pidFile, `${pid}\n`);
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (exited !== null) throw new GeormError('HAGEO_ERR_LAUNCH', `'georm gmd run ${gmd}' exited (${exited}) at start; see ${p.logFile}: ${tail(p.logFile)}`);
    if (await answers(p).catch(() => false)) return pid;
    if (Date.now() > deadline) throw new GeormError('HAGEO_ERR_LAUNCH', `'georm gmd run ${gmd}' (pid ${pid}) did not answer on ${p.control} within ${timeoutMs / 1000} s; see ${p.logFile}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Ends the GMD process: a clean shutdown through the control socket, then SIGTERM, then SIGKILL. */
export async function shutdown(p: GmdProcessPaths, timeoutMs = 60000): Promise<void> {
  const pid = livePid(p);
  await control(p, 'shutdown', {}, 5000).catch(() => undefined);
  if (pid === null) {
    // Started by someone else (no pid file): wait until its control socket stops answering.
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline && await answers(p).catch(() => false)) await new Promise((r) => setTimeout(r, 100));
  } else {
    const deadline = Date.now() + timeoutMs;
    let termSent = false;
    while (alive(pid)) {
      const left = deadline - Date.now();
      if (left < timeoutMs / 3 && !termSent) { process.kill(pid, 'SIGTERM'); termSent = true; }
      if (left < 0) { process.kill(pid, 'SIGKILL'); await new Promise((r) => setTimeout(r, 200)); break; }
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  rmSync(p.pidFile, { force: true });
}

function tail(file: string): string {
  try { return readFileSync(file, 'utf8').slice(-600).trim(); } catch { return ''; }
}

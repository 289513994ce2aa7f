import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createSocket } from 'node:dgram';
import { mkdir, open, writeFile, mkdtemp } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { GeormError } from '../util/errors.js';
import { parseSize } from '../util/size.js';
import { renderConfig } from './cluster-config.js';
import { callControl } from './control.js';
import type { GmdMode } from './protocol.js';
import { endProcess, exitWithin, isAlive } from '../util/process.js';

export interface DemoOptions {
  dir?: string;
  mode: GmdMode;
  size: number;
  /** Extra settings for tests and benchmarks. */
  syncRate?: string;
  regionSize?: string;
  hwm?: string;
  promoteFailureTimeout?: number;
  log?: (line: string) => void;
  /** Called when a GMD process exits without being asked to (the text says which and how). */
  onUnexpectedExit?: (what: string) => void;
}

export interface DemoInfo {
  uri: string;
  unixUri: string;
  config: string;
  primaryVolume: string;
  secondaryVolume: string;
  volumes: { primary: string; secondary: string };
  dir: string;
  gmd: string;
  mode: GmdMode;
  size: number;
  machines: { primary: string; secondary: string };
  logs: { primary: string; secondary: string };
}

/** How a demo's processes stopped: `problems` is empty when each stopped on request, cleanly. */
export interface StopReport { clean: boolean; problems: string[] }

export interface Demo {
  info: DemoInfo;
  /**
   * Stops the processes, primary first: control `stop`, SIGTERM, SIGKILL after a grace period;
   * resolves once none is alive (or one survived SIGKILL, which the report says). Every call
   * returns the same promise.
   */
  stop(): Promise<StopReport>;
  /** SIGKILLs every live process now (also in the middle of stop()) and resolves like stop(). */
  kill(): Promise<StopReport>;
  children: ChildProcess[];
}

/** A demo being started: `ready` resolves once both GMDs are AVAILABLE. */
export interface DemoLaunch extends Omit<Demo, 'info'> {
  /**
   * Rejects when start-up fails or stop()/kill() is called first (code DEMO_ERR_INTERRUPTED),
   * in both cases only after every process started so far has been stopped.
   */
  ready: Promise<DemoInfo>;
  /** Resolves once a stop — asked by stop(), kill() or a failed start-up — has finished. */
  finished: Promise<StopReport>;
}

const GMD = 'demo0gmd';
const BIN = resolve(fileURLToPath(import.meta.url), '..', '..', '..', '..', 'bin', 'georm.js');

/** A UDP base port free on both loopback addresses. */
async function freeUdpPort(addrs: string[]): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const port = 20000 + Math.floor(Math.random() * 40000);
    const socks = addrs.map(() => createSocket('udp4'));
    try {
      await Promise.all(socks.map((s, i) => new Promise<void>((res, rej) => { s.once('error', rej); s.bind(port, addrs[i], () => res()); })));
      return port;
    } catch { /* taken: try another */ } finally { for (const s of socks) try { s.close(); } catch { /* not bound */ } }
  }
  throw new GeormError('DEMO_ERR_PORTS', 'no free UDP port found on 127.0.0.1/127.0.0.2');
}

async function freeTcpPort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const port = (s.address() as { port: number }).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

/** Polls the control socket until the GMD answers; gives up when the child exits or a stop is asked. */
async function waitControl(path: string, child: ChildProcess, stopAsked: Promise<void>, timeoutMs = 20000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let stopping = false;
  void stopAsked.then(() => { stopping = true; });
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new GeormError('DEMO_ERR_CHILD', `GMD process exited with ${child.signalCode ?? `code ${child.exitCode}`}; see its log`);
    }
    if (stopping) return;
    try { await callControl(path, 'status', {}, 2000); return; } catch (e) {
      if (Date.now() > deadline) throw e;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

export interface SiteMachine {
  name: string; site: string; role: 'primary' | 'secondary' | 'none';
  /** One address per geographic network (geo1, geo2, …). */
  addresses: string[]; port: number; runDir: string; volume: string; stateMap: string; nbdListen: string[];
}

export interface TwoSiteConfig {
  keyFile: string; mode: GmdMode; gmd: string; minor: number; regionSize: string; syncRate: string; hwm: string;
  resyncRateLimit?: string; promoteFailureTimeout: number; machines: SiteMachine[];
  /** Geographic network MTU (default 1500). */
  mtu?: number;
}

/** The cluster file for one GMD over two sites (demo, tests, benchmarks), rendered by src/config. */
export function renderTwoSiteConfig(c: TwoSiteConfig): string {
  const nets = c.machines[0]!.addresses.map((_, i) => `geo${i + 1}`);
  return renderConfig({
    cluster: { name: 'demo', keyFile: c.keyFile },
    sites: [...new Set(c.machines.map((m) => m.site))].map((name) => ({ name })),
    networks: nets.map((name) => ({ name, mtu: c.mtu ?? 1500 })),
    machines: c.machines.map((m) => ({
      name: m.name, site: m.site, promoteFailureTimeout: c.promoteFailureTimeout, runDir: m.runDir,
      interfaces: m.addresses.map((address, i) => ({ network: nets[i]!, address, port: m.port })),
    })),
    gmds: [{
      name: c.gmd, minor: c.minor, mode: c.mode, regionSize: parseSize(c.regionSize), syncRate: parseSize(c.syncRate),
      hwm: parseSize(c.hwm), resyncRateLimit: parseSize(c.resyncRateLimit ?? '0'),
      machines: c.machines.map((m) => ({ machine: m.name, volume: m.volume, stateMap: m.stateMap, role: m.role, nbdListen: m.nbdListen })),
    }],
  });
}

/** Grace between SIGTERM and SIGKILL, and how long to wait for a process after SIGKILL. */
const GRACE_MS = 5000;
const KILL_WAIT_MS = 5000;

/**
 * The embedded default: a two-machine, two-site GMD on loopback with two geographic networks
 * (127.0.0.1 and 127.0.0.2), one `georm gmd run` process per machine.
 */
export async function startDemo(o: DemoOptions): Promise<Demo> {
  const d = launchDemo(o);
  const info = await d.ready;
  return { info, stop: d.stop, kill: d.kill, children: d.children };
}

/**
 * Starts the demo and returns at once, so that a caller can ask it to stop at any moment,
 * start-up included: nothing it spawned then outlives the stop. Each child also holds an IPC
 * channel to this process; `georm gmd run` stops itself when that channel closes, so the children
 * end even when this process dies without stopping them (SIGKILL, a crash).
 */
export function launchDemo(o: DemoOptions): DemoLaunch {
  const log = o.log ?? (() => undefined);
  const children: ChildProcess[] = [];
  const names = new Map<ChildProcess, string>();
  const sockets = new Map<ChildProcess, string>();
  const problems: string[] = [];
  let stopRequested = false;
  let killing = false;
  let onStop!: () => void;
  let onFinished!: (r: StopReport) => void;
  const finished = new Promise<StopReport>((r) => { onFinished = r; });
  let onKill!: () => void;
  const stopAsked = new Promise<void>((r) => { onStop = r; });
  const killAsked = new Promise<void>((r) => { onKill = r; });
  const interrupted = () => new GeormError('DEMO_ERR_INTERRUPTED', 'demo stopped during start-up');
  /** `p`, cut short by a stop request (the start-up must not wait 30 s for an answer nobody wants). */
  const orStop = <T>(p: Promise<T>): Promise<T> => Promise.race([p, stopAsked.then(() => { throw interrupted(); })]);
  const who = (c: ChildProcess) => `${names.get(c)} (pid ${c.pid})`;

  const spawnGmd = (m: 'alpha' | 'beta', logFd: number, cfgPath: string, sock: string): ChildProcess => {
    // GEORM_GMD_NODE_ARGS: extra node flags for profiling (e.g. --cpu-prof), which NODE_OPTIONS refuses.
    const nodeArgs = (process.env.GEORM_GMD_NODE_ARGS ?? '').split(' ').filter(Boolean);
    const child = spawn(process.execPath, [...nodeArgs, BIN, 'gmd', 'run', GMD, '--config', cfgPath, '--machine', m], {
      // Own process group: a terminal's Ctrl-C reaches only the demo, which stops the primary first.
      // fd 3 is the IPC channel whose closing tells the child that the demo is gone.
      stdio: ['ignore', logFd, logFd, 'ipc'], env: { ...process.env }, detached: true,
    });
    // The channel carries no messages: it must not keep this process alive.
    child.channel?.unref();
    children.push(child);
    names.set(child, m);
    sockets.set(child, sock);
    child.on('error', (e) => problems.push(`${m}: ${e.message}`));
    child.once('exit', (code, signal) => {
      if (!stopRequested) {
        problems.push(`${who(child)} exited by itself (${signal ?? `code ${code}`}); see its log`);
        o.onUnexpectedExit?.(problems[problems.length - 1]!);
      } else if (code !== null && code !== 0) problems.push(`${who(child)} exited with code ${code} while stopping; see its log`);
    });
    return child;
  };

  const stopOne = async (child: ChildProcess): Promise<void> => {
    if (!isAlive(child)) return;
    if (!killing) {
      // Asked first, so the GMD leaves its peer as it would on `georm stop` (no resync next time).
      // A process that dies meanwhile never answers: waiting out the timeout would only delay the rest.
      const gone = exitWithin(child, 15000);
      await Promise.race([callControl(sockets.get(child)!, 'stop', {}, 15000), killAsked, gone]).catch(() => undefined);
    }
    const outcome = await endProcess(child, killing ? 'SIGKILL' : 'SIGTERM', GRACE_MS, KILL_WAIT_MS);
    if (outcome === 'killed') problems.push(`${who(child)} did not stop within ${GRACE_MS / 1000} s of SIGTERM and was killed (SIGKILL)`);
  };
  let stopping: Promise<StopReport> | undefined;
  const stop = (): Promise<StopReport> => {
    stopping ??= (async () => {
      stopRequested = true;
      onStop();
      try {
        // Primary first: it drains its writes to the secondary, then tells it it leaves.
        for (const child of children) await stopOne(child);
      } catch (e) {
        problems.push(`stopping failed: ${(e as Error).message}`);
      }
      // Whatever happened above: nothing may stay behind.
      for (const child of children) {
        if ((await endProcess(child, 'SIGKILL', 0, KILL_WAIT_MS)) === 'alive') problems.push(`${who(child)} is still alive after SIGKILL`);
      }
      const report = { clean: problems.length === 0, problems };
      onFinished(report);
      return report;
    })();
    return stopping;
  };
  const kill = (): Promise<StopReport> => {
    if (!killing) {
      killing = true;
      problems.push('killed (SIGKILL) on request; the state maps make the next start resync');
      for (const child of children) if (isAlive(child)) child.kill('SIGKILL');
      onKill();
    }
    return stop();
  };

  const up = async (): Promise<DemoInfo> => {
    const dir = resolve(o.dir ?? await mkdtemp(join(tmpdir(), 'georm-demo-')));
    await mkdir(dir, { recursive: true });
    const run = { alpha: join(dir, 'run', 'alpha'), beta: join(dir, 'run', 'beta') };
    const sock = { alpha: join(run.alpha, `${GMD}.sock`), beta: join(run.beta, `${GMD}.sock`) };
    // A demo already running on this dir would answer our start-up calls instead of our own
    // processes (which fail on its sockets), and rewriting its key and config would break it.
    for (const path of Object.values(sock)) {
      const answer = await callControl(path, 'status', {}, 2000).then(() => true, () => false);
      if (answer) throw new GeormError('DEMO_ERR_IN_USE', `${dir} is in use: a GMD process answers on ${path}; stop that demo first or choose another --dir`);
    }
    if (stopRequested) throw interrupted();
    const keyFile = join(dir, 'cluster.key');
    await writeFile(keyFile, randomBytes(32).toString('hex') + '\n', { mode: 0o600 });
    const vol = { alpha: join(dir, 'alpha.img'), beta: join(dir, 'beta.img') };
    for (const v of Object.values(vol)) {
      const fh = await open(v, 'a');
      const st = await fh.stat();
      if (st.size !== o.size) await fh.truncate(o.size);
      await fh.close();
    }
    const addrs = ['127.0.0.1', '127.0.0.2'];
    const pA = await freeUdpPort(addrs);
    let pB = await freeUdpPort(addrs);
    while (pB === pA) pB = await freeUdpPort(addrs);
    const tcp = await freeTcpPort();
    const nbdSock = join(run.alpha, `${GMD}.nbd`);
    const config = renderTwoSiteConfig({
      keyFile, mode: o.mode, gmd: GMD, minor: 0, regionSize: o.regionSize ?? '32K', syncRate: o.syncRate ?? '256K', hwm: o.hwm ?? '128K',
      promoteFailureTimeout: o.promoteFailureTimeout ?? 10,
      machines: [
        { name: 'alpha', site: 'east', role: 'primary', addresses: addrs, port: pA, runDir: run.alpha, volume: vol.alpha,
          stateMap: join(dir, 'alpha.map'), nbdListen: [`tcp://127.0.0.1:${tcp}`, `unix:${nbdSock}`] },
        { name: 'beta', site: 'west', role: 'secondary', addresses: addrs, port: pB, runDir: run.beta, volume: vol.beta,
          stateMap: join(dir, 'beta.map'), nbdListen: [`unix:${join(run.beta, `${GMD}.nbd`)}`] },
      ],
    });
    const cfgPath = join(dir, 'georm.toml');
    await writeFile(cfgPath, config);
    await mkdir(run.alpha, { recursive: true });
    await mkdir(run.beta, { recursive: true });

    const logs = { primary: join(dir, 'alpha.log'), secondary: join(dir, 'beta.log') };
    const logA = await open(logs.primary, 'a');
    const logB = await open(logs.secondary, 'a').catch(async (e: unknown) => { await logA.close(); throw e; });
    let alpha: ChildProcess;
    let beta: ChildProcess;
    try {
      // Checked right before spawning (no await in between): a stop asked earlier spawns nothing.
      if (stopRequested) throw interrupted();
      alpha = spawnGmd('alpha', logA.fd, cfgPath, sock.alpha);
      beta = spawnGmd('beta', logB.fd, cfgPath, sock.beta);
    } finally {
      await logA.close();
      await logB.close();
    }
    await orStop(Promise.all([waitControl(sock.alpha, alpha, stopAsked), waitControl(sock.beta, beta, stopAsked)]));
    log(`demo: processes up (pids ${alpha.pid}, ${beta.pid}; logs: ${logs.primary}, ${logs.secondary})`);
    await orStop(callControl(sock.alpha, 'start', { down: ['beta'] }, 30000));
    await orStop(callControl(sock.beta, 'start', {}, 30000));
    if (stopRequested) throw interrupted();
    log('demo: alpha (primary) and beta (secondary) AVAILABLE');
    return {
      uri: `nbd://127.0.0.1:${tcp}/${GMD}`, unixUri: `nbd+unix:///${GMD}?socket=${nbdSock}`, config: cfgPath,
      primaryVolume: vol.alpha, secondaryVolume: vol.beta, volumes: { primary: vol.alpha, secondary: vol.beta },
      dir, gmd: GMD, mode: o.mode, size: o.size, machines: { primary: 'alpha', secondary: 'beta' }, logs,
    };
  };
  const ready = up().catch(async (e: unknown) => {
    // Once a stop was asked, a start-up error is its doing (a process ended under the start-up's
    // feet); what went wrong besides is in the stop report.
    if (stopRequested) e = interrupted();
    const report = await stop();
    // A failed start-up says what it left behind, if anything.
    const left = report.problems.filter((p) => / alive /.test(p));
    if (left.length && e instanceof Error) e.message += `; ${left.join('; ')}`;
    throw e;
  });
  return { ready, finished, stop, kill, children };
}

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
import { startWanEmulator, type WanEmulator, type Impairment } from '../tools/wanem.js';

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

/** Which of the demo's two machines: the primary is alpha, the secondary beta. */
export type DemoSide = 'primary' | 'secondary';
export type DemoNetwork = 'geo1' | 'geo2';

/**
 * What the rehearsal commands act on (src/gmd/demo-commands.ts). The two machines reach each other
 * only through one WAN emulator per geographic network, so the demo can cut or degrade a network
 * without root or namespaces.
 */
export interface DemoRehearsal {
  /** SIGKILLs that side's `gmd run` process; the demo keeps running. */
  killSide(side: DemoSide): Promise<string>;
  /**
   * Starts a new `gmd run` process for that side (a running one is first stopped cleanly) and
   * brings its GMD AVAILABLE again; resolves with what was done, step by step.
   */
  restartSide(side: DemoSide): Promise<string[]>;
  cut(nets: DemoNetwork[]): void;
  restore(): void;
  wan(imp: Impairment): void;
  /** The live process of a side, if any, and its control socket. */
  side(side: DemoSide): { machine: string; pid: number | null; socket: string };
  /** Per network: cut or not and the impairment in force. */
  networks(): Array<{ name: DemoNetwork; cut: boolean; impairment: Impairment }>;
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
  /** Rehearsal actions; usable once `ready` has resolved. */
  rehearsal: DemoRehearsal;
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
  /** Processes killed on purpose (rehearsal `kill`): their exit is no problem. */
  const killedOnPurpose = new Set<ChildProcess>();
  /** The live process of each machine (a restart replaces it). */
  const current = new Map<'alpha' | 'beta', ChildProcess>();
  const relays: WanEmulator[] = [];
  const netState = new Map<DemoNetwork, { cut: boolean; impairment: Impairment }>();
  let started: { cfg: { alpha: string; beta: string }; logs: { alpha: string; beta: string }; sock: { alpha: string; beta: string } } | undefined;
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
    current.set(m, child);
    child.once('exit', (code, signal) => {
      if (killedOnPurpose.has(child)) return;
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
        const order = [current.get('alpha'), current.get('beta'), ...children].filter((c): c is ChildProcess => c !== undefined);
        for (const child of new Set(order)) await stopOne(child);
      } catch (e) {
        problems.push(`stopping failed: ${(e as Error).message}`);
      }
      // Whatever happened above: nothing may stay behind.
      for (const child of children) {
        if ((await endProcess(child, 'SIGKILL', 0, KILL_WAIT_MS)) === 'alive') problems.push(`${who(child)} is still alive after SIGKILL`);
      }
      await Promise.all(relays.map((r) => r.close().catch(() => undefined)));
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
    // The WAN emulator's ports: alpha reaches beta at `toBeta`, beta reaches alpha at `toAlpha`.
    const ports = new Set([pA, pB]);
    const freshPort = async () => { let p = await freeUdpPort(addrs); while (ports.has(p)) p = await freeUdpPort(addrs); ports.add(p); return p; };
    const toBeta = await freshPort();
    const toAlpha = await freshPort();
    const tcp = await freeTcpPort();
    const nbdSock = join(run.alpha, `${GMD}.nbd`);
    const render = (alphaPort: number, betaPort: number) => renderTwoSiteConfig({
      keyFile, mode: o.mode, gmd: GMD, minor: 0, regionSize: o.regionSize ?? '32K', syncRate: o.syncRate ?? '256K', hwm: o.hwm ?? '128K',
      promoteFailureTimeout: o.promoteFailureTimeout ?? 10,
      machines: [
        { name: 'alpha', site: 'east', role: 'primary', addresses: addrs, port: alphaPort, runDir: run.alpha, volume: vol.alpha,
          stateMap: join(dir, 'alpha.map'), nbdListen: [`tcp://127.0.0.1:${tcp}`, `unix:${nbdSock}`] },
        { name: 'beta', site: 'west', role: 'secondary', addresses: addrs, port: betaPort, runDir: run.beta, volume: vol.beta,
          stateMap: join(dir, 'beta.map'), nbdListen: [`unix:${join(run.beta, `${GMD}.nbd`)}`] },
      ],
    });
    // georm.toml is the cluster as it is; each machine's own copy differs only in where it sends
    // to its peer (the emulator), which GeoMessage allows: a peer is known by its authenticated
    // header, not by the address its packets come from.
    const cfgPath = join(dir, 'georm.toml');
    await writeFile(cfgPath, render(pA, pB));
    const cfg = { alpha: join(dir, 'alpha.toml'), beta: join(dir, 'beta.toml') };
    await writeFile(cfg.alpha, render(pA, toBeta));
    await writeFile(cfg.beta, render(toAlpha, pB));
    for (const [i, address] of addrs.entries()) {
      if (stopRequested) throw interrupted();
      relays.push(await startWanEmulator({
        a: { listen: { address, port: toBeta }, target: { address, port: pA } },
        b: { listen: { address, port: toAlpha }, target: { address, port: pB } },
      }));
      netState.set(`geo${i + 1}` as DemoNetwork, { cut: false, impairment: {} });
    }
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
      alpha = spawnGmd('alpha', logA.fd, cfg.alpha, sock.alpha);
      beta = spawnGmd('beta', logB.fd, cfg.beta, sock.beta);
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
    started = { cfg, logs: { alpha: logs.primary, beta: logs.secondary }, sock };
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
  const machineOf = (side: DemoSide) => (side === 'primary' ? 'alpha' : 'beta');
  const needStarted = () => {
    if (!started) throw new GeormError('DEMO_ERR_NOT_READY', 'the demo is still starting');
    if (stopRequested) throw new GeormError('DEMO_ERR_STOPPING', 'the demo is stopping');
    return started;
  };
  const relayOf = (net: DemoNetwork) => relays[net === 'geo1' ? 0 : 1]!;
  const rehearsal: DemoRehearsal = {
    async killSide(side) {
      needStarted();
      const m = machineOf(side);
      const child = current.get(m);
      if (!child || !isAlive(child)) return `${m} (${side}) is not running`;
      killedOnPurpose.add(child);
      child.kill('SIGKILL');
      await exitWithin(child, KILL_WAIT_MS);
      return `${m} (${side}, pid ${child.pid}) killed (SIGKILL)`;
    },
    async restartSide(side) {
      const s = needStarted();
      const m = machineOf(side);
      const other = m === 'alpha' ? 'beta' : 'alpha';
      const done: string[] = [];
      const old = current.get(m);
      if (old && isAlive(old)) {
        // A clean stop first (the seed's stopgmd): the peer is told it leaves and the state map is
        // closed clean, so the new process may rejoin. Its gmddowns, if any, go with the process.
        killedOnPurpose.add(old);
        await callControl(s.sock[m], 'stop', {}, 15000).catch(() => undefined);
        await endProcess(old, 'SIGTERM', GRACE_MS, KILL_WAIT_MS);
        done.push(`${m} (${side}, pid ${old.pid}) stopped cleanly`);
      }
      const fh = await open(s.logs[m], 'a');
      let child: ChildProcess;
      try { child = spawnGmd(m, fh.fd, s.cfg[m], s.sock[m]); } finally { await fh.close(); }
      await waitControl(s.sock[m], child, stopAsked);
      if (stopRequested) throw interrupted();
      // The process opened the volume and its state map (STOPPED); start makes it AVAILABLE and,
      // with its peer up, resynchronises the regions its map or the peer's holds stale.
      try {
        await callControl(s.sock[m], 'start', {}, 30000);
      } catch (e) {
        // A primary killed with writes in flight holds dirty regions while the secondary runs on:
        // the GMD refuses to start next to it. The seed's way out, done here step by step: stop the
        // secondary, start the primary with the secondary given down, start the secondary, which
        // then receives the dirty regions.
        if (!(e instanceof GeormError && e.code === 'GMD_ERR_START_LOCAL_STALE' && side === 'primary')) throw e;
        done.push(`${m}: ${e.message}`);
        await callControl(s.sock[other], 'stop', {}, 15000);
        done.push(`${other}: stopped (stopgmd)`);
        await callControl(s.sock[m], 'start', { down: [other] }, 30000);
        done.push(`${m}: started with gmddown ${other}`);
        await callControl(s.sock[other], 'start', {}, 30000);
        done.push(`${other}: started; it receives the dirty regions from ${m}`);
      }
      done.push(`${m} (${side}) restarted (pid ${child.pid}) and AVAILABLE`);
      return done;
    },
    cut(nets) {
      for (const n of nets) { relayOf(n).cut(); netState.get(n)!.cut = true; }
    },
    restore() {
      for (const [n, st] of netState) { relayOf(n).restore(); st.cut = false; }
    },
    wan(imp) {
      for (const [n, st] of netState) { relayOf(n).set(imp); st.impairment = { ...st.impairment, ...imp }; }
    },
    side(side) {
      const m = machineOf(side);
      const child = current.get(m);
      return { machine: m, pid: child && isAlive(child) ? child.pid ?? null : null, socket: started?.sock[m] ?? '' };
    },
    networks() {
      return [...netState].map(([name, st]) => ({ name, cut: st.cut, impairment: { ...st.impairment } }));
    },
  };
  return { ready, finished, stop, kill, children, rehearsal };
}

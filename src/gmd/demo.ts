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
import { stopProcess } from '../util/process.js';

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

export interface Demo { info: DemoInfo; stop(): Promise<void>; children: ChildProcess[] }

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

async function waitControl(path: string, child: ChildProcess, timeoutMs = 20000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (child.exitCode !== null) throw new GeormError('DEMO_ERR_CHILD', `GMD process exited with code ${child.exitCode}; see its log`);
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

/**
 * The embedded default: a two-machine, two-site GMD on loopback with two geographic networks
 * (127.0.0.1 and 127.0.0.2), one `georm gmd run` process per machine.
 */
export async function startDemo(o: DemoOptions): Promise<Demo> {
  const dir = resolve(o.dir ?? await mkdtemp(join(tmpdir(), 'georm-demo-')));
  await mkdir(dir, { recursive: true });
  const log = o.log ?? (() => undefined);
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
  const run = { alpha: join(dir, 'run', 'alpha'), beta: join(dir, 'run', 'beta') };
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

  const children: ChildProcess[] = [];
  const logs = { primary: join(dir, 'alpha.log'), secondary: join(dir, 'beta.log') };
  const spawnGmd = async (m: 'alpha' | 'beta', logPath: string) => {
    const fh = await open(logPath, 'a');
    // GEORM_GMD_NODE_ARGS: extra node flags for profiling (e.g. --cpu-prof), which NODE_OPTIONS refuses.
    const nodeArgs = (process.env.GEORM_GMD_NODE_ARGS ?? '').split(' ').filter(Boolean);
    const child = spawn(process.execPath, [...nodeArgs, BIN, 'gmd', 'run', GMD, '--config', cfgPath, '--machine', m], {
      // Own process group: a terminal's Ctrl-C reaches only the demo, which stops the primary first.
      stdio: ['ignore', fh.fd, fh.fd], env: { ...process.env }, detached: true,
    });
    await fh.close();
    children.push(child);
    return child;
  };
  const sock = { alpha: join(run.alpha, `${GMD}.sock`), beta: join(run.beta, `${GMD}.sock`) };
  const alpha = await spawnGmd('alpha', logs.primary);
  const beta = await spawnGmd('beta', logs.secondary);
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    // Primary first: it drains its writes to the secondary, then tells it it leaves.
    for (const [path, child] of [[sock.alpha, alpha], [sock.beta, beta]] as const) {
      if (child.exitCode !== null || child.signalCode !== null) continue;
      await callControl(path, 'stop', {}, 15000).catch(() => undefined);
      await stopProcess(child);
    }
  };
  try {
    await Promise.all([waitControl(sock.alpha, alpha), waitControl(sock.beta, beta)]);
    log(`demo: processes up (logs: ${logs.primary}, ${logs.secondary})`);
    await callControl(sock.alpha, 'start', { down: ['beta'] }, 30000);
    await callControl(sock.beta, 'start', {}, 30000);
    log('demo: alpha (primary) and beta (secondary) AVAILABLE');
  } catch (e) {
    await stop();
    throw e;
  }
  const info: DemoInfo = {
    uri: `nbd://127.0.0.1:${tcp}/${GMD}`, unixUri: `nbd+unix:///${GMD}?socket=${nbdSock}`, config: cfgPath,
    primaryVolume: vol.alpha, secondaryVolume: vol.beta, volumes: { primary: vol.alpha, secondary: vol.beta },
    dir, gmd: GMD, mode: o.mode, size: o.size, machines: { primary: 'alpha', secondary: 'beta' }, logs,
  };
  return { info, stop, children };
}

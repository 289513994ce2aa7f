/**
 * Test harness for two-site GMD tests: writes a cluster file, runs one real `georm gmd run`
 * process per machine (optionally inside network namespaces joined by two veth pairs), and talks
 * to them through their control sockets. Everything it creates is removed by `cleanup`.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes, createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, open, writeFile, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { once } from 'node:events';
import { callControl } from '../../src/gmd/control.js';
import { renderTwoSiteConfig, type SiteMachine } from '../../src/gmd/demo.js';
import type { GmdMode } from '../../src/gmd/protocol.js';
import type { GmdStatus } from '../../src/gmd/device/index.js';
import { loadConfig, findGmd, findMachine, gmdMachine, peersOf, endpointsOf } from '../../src/gmd/cluster-config.js';
import { openGeoMessage, loadClusterKey, type GeoMessage } from '../../src/geomessage/index.js';
import { GeoMirrorDevice, type GmdResources } from '../../src/gmd/device/index.js';
import type { NetHandler, NetPayload, NetPayloadMemory, PeerTransport } from '../../src/gmd/ports.js';
import { FileBackend } from '../../nbd/index.js';
import { StateMap } from '../../src/statemap/index.js';
import { nativeFileExtensions } from '../../src/native/extensions.js';
import { silentLogger } from '../../src/util/log.js';
import { GEORM_BIN, tempDir } from '../helpers/env.js';
import { netnsCommand, runCmd } from '../helpers/proc.js';

export type M = 'alpha' | 'beta';

export interface ClusterOptions {
  mode: GmdMode;
  size: number;
  netns?: boolean;
  pft?: number;
  syncRate?: string;
  regionSize?: string;
  hwm?: string;
  rateLimit?: string;
  roles?: [SiteMachine['role'], SiteMachine['role']];
  /** Geographic networks (veth pairs / loopback addresses), default 2. */
  networks?: 1 | 2;
  /** veth and geographic network MTU (default 1500). */
  mtu?: number;
  /** Extra machines at the west site (start rule: more than one remote peer). */
  extraWest?: string[];
}

async function sh(cmd: string, args: string[]): Promise<string> {
  const r = await runCmd(cmd, args, { timeoutMs: 30000 });
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.code}): ${r.stderr}`);
  return r.stdout;
}

export class TestCluster {
  readonly dir: string;
  readonly cfgPath: string;
  readonly gmd = 'test0gmd';
  readonly vol: Record<string, string> = {};
  readonly map: Record<string, string> = {};
  readonly sock: Record<string, string> = {};
  readonly nbdSock: Record<string, string> = {};
  readonly ns: Record<string, string> = {};
  readonly logs: Record<string, string> = {};
  readonly procs = new Map<string, ChildProcess>();
  private readonly cleanupDir: () => void;
  private nsCreated: string[] = [];
  readonly opts: ClusterOptions;
  /** Host-side veth interfaces toward each machine's network 1 (for tc). */
  readonly veth: Record<string, string> = {};

  private constructor(opts: ClusterOptions) {
    const { dir, cleanup } = tempDir('georm-gmd-');
    this.dir = dir;
    this.cleanupDir = cleanup;
    this.cfgPath = join(dir, 'georm.toml');
    this.opts = opts;
  }

  get machines(): string[] { return ['alpha', 'beta', ...(this.opts.extraWest ?? [])]; }
  get uri(): string { return `nbd+unix:///${this.gmd}?socket=${this.nbdSock.alpha}`; }

  static async create(opts: ClusterOptions): Promise<TestCluster> {
    const c = new TestCluster(opts);
    try { await c.setup(); } catch (e) { await c.cleanup(); throw e; }
    return c;
  }

  private async setup(): Promise<void> {
    const o = this.opts;
    const keyFile = join(this.dir, 'cluster.key');
    await writeFile(keyFile, randomBytes(32).toString('hex') + '\n', { mode: 0o600 });
    const names = this.machines;
    const addrs: Record<string, string[]> = {};
    if (o.netns) {
      // alpha in one namespace, every west machine in another; two veth pairs = two networks.
      const tag = randomBytes(2).toString('hex');
      const sub = 2 * (1 + Math.floor(Math.random() * 120));
      const nsA = `gmd${tag}a`, nsB = `gmd${tag}b`;
      for (const n of [nsA, nsB]) { await sh('ip', ['netns', 'add', n]); this.nsCreated.push(n); await sh('ip', ['-n', n, 'link', 'set', 'lo', 'up']); }
      for (let k = 0; k < (o.networks ?? 2); k++) {
        const va = `gmd${tag}a${k}`, vb = `gmd${tag}b${k}`;
        await sh('ip', ['link', 'add', va, 'netns', nsA, 'type', 'veth', 'peer', 'name', vb, 'netns', nsB]);
        await sh('ip', ['-n', nsA, 'addr', 'add', `10.202.${sub + k}.1/24`, 'dev', va]);
        await sh('ip', ['-n', nsB, 'addr', 'add', `10.202.${sub + k}.2/24`, 'dev', vb]);
        for (const [n, v] of [[nsA, va], [nsB, vb]] as const) {
          await sh('ip', ['-n', n, 'link', 'set', v, 'mtu', String(o.mtu ?? 1500)]);
          await sh('ip', ['-n', n, 'link', 'set', v, 'up']);
        }
        if (k === 0) { this.veth.alpha = va; this.veth.beta = vb; }
      }
      this.ns.alpha = nsA;
      addrs.alpha = [`10.202.${sub}.1`, `10.202.${sub + 1}.1`].slice(0, o.networks ?? 2);
      for (const m of names.slice(1)) {
        this.ns[m] = nsB;
        addrs[m] = [`10.202.${sub}.2`, `10.202.${sub + 1}.2`].slice(0, o.networks ?? 2);
      }
    } else {
      for (const m of names) addrs[m] = ['127.0.0.1', '127.0.0.2'].slice(0, o.networks ?? 2);
    }
    const machines: SiteMachine[] = [];
    let port = 21000 + Math.floor(Math.random() * 30000);
    for (const [i, m] of names.entries()) {
      const runDir = join(this.dir, 'run', m);
      await mkdir(runDir, { recursive: true });
      this.vol[m] = join(this.dir, `${m}.img`);
      this.map[m] = join(this.dir, `${m}.map`);
      this.sock[m] = join(runDir, `${this.gmd}.sock`);
      this.nbdSock[m] = join(runDir, `${this.gmd}.nbd`);
      this.logs[m] = join(this.dir, `${m}.log`);
      const fh = await open(this.vol[m]!, 'w');
      await fh.truncate(o.size);
      await fh.close();
      const role = i === 0 ? (o.roles?.[0] ?? 'primary') : (o.roles?.[1] ?? 'secondary');
      machines.push({
        name: m, site: i === 0 ? 'east' : 'west', role, addresses: addrs[m]!, port: (port += 7), runDir,
        volume: this.vol[m]!, stateMap: this.map[m]!, nbdListen: [`unix:${this.nbdSock[m]}`],
      });
    }
    await writeFile(this.cfgPath, renderTwoSiteConfig({
      keyFile, mode: o.mode, gmd: this.gmd, minor: 3, regionSize: o.regionSize ?? '32K', syncRate: o.syncRate ?? '256K',
      hwm: o.hwm ?? '128K', resyncRateLimit: o.rateLimit ?? '0', promoteFailureTimeout: o.pft ?? 3, machines, mtu: o.mtu,
    }));
  }

  /** Starts the `gmd run` process for machine m (STOPPED state) and waits for its control socket. */
  async run(m: string, extra: string[] = [], env: Record<string, string> = {}): Promise<ChildProcess> {
    // GEORM_GMD_NODE_ARGS: extra node flags for profiling (e.g. --cpu-prof), which NODE_OPTIONS refuses.
    const nodeArgs = (process.env.GEORM_GMD_NODE_ARGS ?? '').split(' ').filter(Boolean);
    const args = [...nodeArgs, GEORM_BIN, 'gmd', 'run', this.gmd, '--config', this.cfgPath, '--machine', m, ...extra];
    const fh = await open(this.logs[m]!, 'a');
    const child = this.ns[m]
      ? spawn(...netnsCommand(this.ns[m]!, process.execPath, args), { stdio: ['ignore', fh.fd, fh.fd], env: { ...process.env, ...env } })
      : spawn(process.execPath, args, { stdio: ['ignore', fh.fd, fh.fd], env: { ...process.env, ...env } });
    await fh.close();
    this.procs.set(m, child);
    const deadline = Date.now() + 20000;
    for (;;) {
      if (child.exitCode !== null) throw new Error(`gmd run ${m} exited ${child.exitCode}: ${await this.log(m)}`);
      try { await callControl(this.sock[m]!, 'status', {}, 2000); break; } catch (e) {
        if (Date.now() > deadline) throw e;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    return child;
  }

  async log(m: string): Promise<string> { return (await readFile(this.logs[m]!, 'utf8').catch(() => '')).slice(-4000); }

  ctl(m: string, op: string, args: Record<string, unknown> = {}, timeoutMs = 60000): Promise<unknown> {
    return callControl(this.sock[m]!, op, args, timeoutMs);
  }

  status(m: string): Promise<GmdStatus> { return this.ctl(m, 'status') as Promise<GmdStatus>; }

  start(m: string, down: string[] = []): Promise<{ message: string }> {
    return this.ctl(m, 'start', { down }) as Promise<{ message: string }>;
  }

  /** Runs both machines and starts the mirror: primary with gmddown of the secondary, then the secondary. */
  async up(): Promise<void> {
    await Promise.all([this.run('alpha'), this.run('beta')]);
    await this.start('alpha', ['beta']);
    await this.start('beta');
  }

  /** Waits until `pred(status)` holds. */
  async waitFor(m: string, pred: (s: GmdStatus) => boolean, what: string, timeoutMs = 60000): Promise<GmdStatus> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const s = await this.status(m);
      if (pred(s)) return s;
      if (Date.now() > deadline) throw new Error(`timeout waiting for ${what} on ${m}: ${JSON.stringify(s)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** Both maps clean and the primary mirroring (resync finished). */
  async waitInSync(timeoutMs = 120000): Promise<void> {
    await this.waitFor('alpha', (s) => s.peers.some((p) => p.active) && !!s.map && s.map.stale === 0 && s.map.inconsistent === 0
      && (!s.resync || s.resync.complete || s.resync.leftBytes === 0), 'mirror in sync', timeoutMs);
    await this.waitFor('beta', (s) => !!s.map && s.map.stale === 0 && s.map.inconsistent === 0, 'secondary map clean', timeoutMs);
  }

  async kill9(m: string): Promise<void> {
    const c = this.procs.get(m);
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    const exited = once(c, 'exit');
    c.kill('SIGKILL');
    await exited;
  }

  /** Graceful: stop the GMD, then end the process. */
  async terminate(m: string): Promise<void> {
    const c = this.procs.get(m);
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    await this.ctl(m, 'stop', {}, 30000).catch(() => undefined);
    const exited = once(c, 'exit');
    c.kill('SIGTERM');
    const t = setTimeout(() => c.kill('SIGKILL'), 8000);
    await exited;
    clearTimeout(t);
  }

  async cleanup(): Promise<void> {
    for (const m of this.procs.keys()) await this.kill9(m).catch(() => undefined);
    for (const n of this.nsCreated) await runCmd('ip', ['netns', 'del', n]).catch(() => undefined);
    this.cleanupDir();
  }
}

export async function sha256File(path: string, length?: number): Promise<string> {
  const h = createHash('sha256');
  const s = createReadStream(path, length === undefined ? {} : { start: 0, end: length - 1 });
  for await (const chunk of s) h.update(chunk as Buffer);
  return h.digest('hex');
}

/** Byte-identical check with cmp (a real tool, as an administrator would check). */
export async function identical(a: string, b: string): Promise<{ same: boolean; detail: string }> {
  const r = await runCmd('cmp', [a, b], { timeoutMs: 120000 });
  return { same: r.code === 0, detail: (r.stdout + r.stderr).trim() };
}

/** ext4 on the GMD through nbdfuse + losetup; returns the mount point and a cleanup that undoes all. */
export async function mountExt4(dir: string, uri: string): Promise<{ mnt: string; unmount: () => Promise<void> }> {
  const fuseDir = join(dir, 'fuse');
  const mnt = join(dir, 'mnt');
  await mkdir(fuseDir, { recursive: true });
  await mkdir(mnt, { recursive: true });
  const pidFile = join(dir, 'nbdfuse.pid');
  const fuse = spawn('nbdfuse', ['-P', pidFile, join(fuseDir, 'nbd'), uri], { stdio: ['ignore', 'ignore', 'pipe'] });
  let fuseErr = '';
  fuse.stderr!.on('data', (d: Buffer) => { fuseErr += d.toString(); });
  const deadline = Date.now() + 15000;
  while (!(await readFile(pidFile, 'utf8').catch(() => ''))) {
    if (Date.now() > deadline || fuse.exitCode !== null) throw new Error(`nbdfuse did not start: ${fuseErr}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  let loop = '';
  // Runs once however often it is called (a test unmounts, then its teardown does): a second
  // `losetup -d /dev/loopN` would detach whatever another test file attached there since.
  let unmounting: Promise<void> | null = null;
  const unmount = () => unmounting ??= (async () => {
    await runCmd('umount', [mnt]).catch(() => undefined);
    if (loop) await runCmd('losetup', ['-d', loop]).catch(() => undefined);
    await runCmd('fusermount3', ['-u', fuseDir]).catch(() => undefined);
    if (fuse.exitCode === null && fuse.signalCode === null) {
      const t = setTimeout(() => fuse.kill('SIGKILL'), 5000);
      await once(fuse, 'exit');
      clearTimeout(t);
    }
  })();
  try {
    loop = (await sh('losetup', ['-f', '--show', join(fuseDir, 'nbd')])).trim();
    await sh('mkfs.ext4', ['-q', '-F', '-E', 'nodiscard,lazy_itable_init=1,lazy_journal_init=1', loop]);
    await sh('mount', [loop, mnt]);
  } catch (e) { await unmount(); throw e; }
  return { mnt, unmount };
}

/** A promise the test resolves by hand: `open()` resolves `opened`. */
export class Latch {
  open!: () => void;
  readonly opened = new Promise<void>((r) => { this.open = r; });
}

/** GeoMessage as a device's PeerTransport, unchanged; tests subclass it to step into one call. */
export class ForwardingTransport implements PeerTransport {
  constructor(protected readonly net: GeoMessage) {}
  request(peer: string, service: number, payload: NetPayload, opts?: { ordered?: boolean; timeoutMs?: number }): Promise<Buffer> {
    return this.net.request(peer, service, payload, opts);
  }
  handle(service: number, handler: NetHandler, opts?: { payloads?: NetPayloadMemory }): void { this.net.handle(service, handler, opts); }
  peerState(peer: string): 'up' | 'down' | 'unknown' { return this.net.peerState(peer); }
  declareDown(peer: string): void { this.net.declareDown(peer); }
  on(event: string, listener: (ev: { peer: string; reason?: string }) => void): unknown { return this.net.on(event, listener); }
}

/** A machine's GMD run inside the test process instead of by `gmd run` (see inProcessGmd). */
export interface InProcessGmd { dev: GeoMirrorDevice; geo: GeoMessage; close(): Promise<void> }

/**
 * Machine m's GMD as a real GeoMirrorDevice in this process: its real volume and a new state map
 * file, and real GeoMessage on m's endpoints, which `wrap` may put a test-controlled step in front
 * of. For tests that must act between the device's steps (hold a message, write without a flush).
 * The `gmd run` process of m must not run. `close` stops and unconfigures it and closes GeoMessage.
 */
export async function inProcessGmd(c: TestCluster, m: string, wrap: (geo: GeoMessage) => PeerTransport = (geo) => geo): Promise<InProcessGmd> {
  const cfg = await loadConfig(c.cfgPath);
  const g = findGmd(cfg, c.gmd);
  const peers = peersOf(cfg, g, m).map((p) => p.name);
  const pft = findMachine(cfg, m).promoteFailureTimeout * 1000;
  const geo = await openGeoMessage({
    machine: m, key: await loadClusterKey(cfg.cluster.keyFile), endpoints: endpointsOf(cfg, m, g.minor), logger: silentLogger,
    peers: peers.map((p) => ({ machine: p, endpoints: endpointsOf(cfg, p, g.minor), promoteFailureTimeoutMs: pft })),
  });
  const gm = gmdMachine(g, m);
  const dev = new GeoMirrorDevice({
    name: c.gmd, minor: g.minor, machine: m, peers, net: wrap(geo), logger: silentLogger,
    open: async (): Promise<GmdResources> => {
      const local = await FileBackend.open(gm.volume, { readOnly: false, extensions: nativeFileExtensions() });
      const map = await StateMap.create(gm.stateMap, { gmdName: g.name, minor: g.minor, deviceSize: local.size(), regionSize: g.regionSize });
      return { local, map, attrs: { mode: g.mode, role: gm.role, regionSize: g.regionSize, syncRate: g.syncRate, hwm: g.hwm, resyncRateLimit: g.resyncRateLimit } };
    },
  });
  dev.attachNetEvents();
  const close = async (): Promise<void> => {
    await dev.stop('test end').catch(() => undefined);
    await dev.unconfigure().catch(() => undefined);
    await geo.close().catch(() => undefined);
  };
  return { dev, geo, close };
}

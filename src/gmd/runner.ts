import { createHash } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import type { Server } from 'node:net';
import { NbdServer, FileBackend, transmissionFlags } from '../../nbd/index.js';
import { loadConfig, findGmd, findMachine, gmdMachine, peersOf, type ClusterConfig } from './cluster-config.js';
import { openGeoMessage, loadClusterKey, type GeoMessage, type NetworkEndpoint, type PeerSpec } from '../geomessage/index.js';
import { StateMap, StateMapError } from '../statemap/index.js';
import { systemd } from '../native/systemd.js';
import { attachExport, DEFAULT_ATTACH_TIMEOUT_SEC, type Attached } from '../native/attach.js';
import { GeormError } from '../util/errors.js';
import { createLogger, type Logger } from '../util/log.js';
import { serveControl } from './control.js';
import { GeoMirrorDevice, type GmdAttributes, type GmdResources } from './device.js';
import type { PeerInfo } from './protocol.js';

export interface RunOptions {
  config: string;
  machine?: string;
  /** Start after configuring (with gmddown for these peers). */
  start?: boolean;
  down?: string[];
  /** Stay DEFINED (do not open the volume and map). */
  defined?: boolean;
  logger?: Logger;
}

export interface RunningGmd {
  device: GeoMirrorDevice;
  nbdUris: string[];
  controlPath: string;
  close(): Promise<void>;
}

/** Where the control socket of `gmd` on `machine` lives. */
export function controlSocketPath(cfg: ClusterConfig, gmd: string, machine: string): string {
  const m = findMachine(cfg, machine);
  return join(m.runDir, `${gmd}.sock`);
}

export function defaultMachine(machine?: string): string {
  return machine ?? process.env.GEORM_MACHINE ?? hostname();
}

function endpointsOf(cfg: ClusterConfig, machine: string, minor: number): NetworkEndpoint[] {
  const m = findMachine(cfg, machine);
  return m.interfaces.map((i) => {
    const net = cfg.networks.find((n) => n.name === i.network);
    return { network: i.network, address: i.address, port: i.port + minor, ...(net?.mtu ? { mtu: net.mtu } : {}) };
  });
}

/** Runs one GMD in this process: GeoMessage endpoint, NBD server, control socket (`georm gmd run`). */
export async function runGmd(name: string, opts: RunOptions): Promise<RunningGmd> {
  const log = opts.logger ?? createLogger(`gmd:${name}`);
  const configText = await readFile(opts.config, 'utf8');
  const digest = createHash('sha256').update(configText).digest('hex').slice(0, 16);
  let cfg = await loadConfig(opts.config);
  const machine = defaultMachine(opts.machine);
  const gmd = findGmd(cfg, name);
  const here = gmdMachine(gmd, machine);
  const peerMachines = peersOf(cfg, gmd, machine);
  const key = await loadClusterKey(cfg.cluster.keyFile);
  const peers: PeerSpec[] = peerMachines.map((p) => ({
    machine: p.name,
    endpoints: endpointsOf(cfg, p.name, gmd.minor),
    promoteFailureTimeoutMs: findMachine(cfg, machine).promoteFailureTimeout * 1000,
  }));
  const net: GeoMessage = await openGeoMessage({ machine, key, endpoints: endpointsOf(cfg, machine, gmd.minor), peers, logger: log });

  const open = async (): Promise<GmdResources> => {
    // Re-read the configuration: attribute changes made in DEFINED state take effect here.
    cfg = await loadConfig(opts.config);
    const g = findGmd(cfg, name);
    const gm = gmdMachine(g, machine);
    const local = await FileBackend.open(gm.volume, { readOnly: false });
    const identity = { gmdName: g.name, minor: g.minor, deviceSize: local.size(), regionSize: g.regionSize };
    let map: StateMap;
    try {
      map = await StateMap.open(gm.stateMap, identity);
    } catch (e) {
      if (!(e instanceof StateMapError) || e.code !== 'STATEMAP_ERR_NOT_FOUND') { await local.close(); throw e; }
      map = await StateMap.create(gm.stateMap, identity);
    }
    const attrs: GmdAttributes = {
      mode: g.mode, role: gm.role, regionSize: g.regionSize, syncRate: g.syncRate, hwm: g.hwm, resyncRateLimit: g.resyncRateLimit,
    };
    return { local, map, attrs };
  };

  const device = new GeoMirrorDevice({
    name, minor: gmd.minor, machine, peers: peerMachines.map((p) => p.name), net, open, configDigest: digest, logger: log,
  });
  device.attachNetEvents();
  if (!opts.defined) {
    // A volume or state map that cannot be opened leaves the GMD DEFINED with the reason in its
    // events (and in the next start's error) rather than ending the process.
    await device.configure().catch((e: unknown) => device.event('error', `configure failed: ${(e as Error).message}`));
  }

  const nbd = new NbdServer({ exports: [{ name, description: `GeoMirror device ${name}`, backend: device }] });
  const nbdUris: string[] = [];
  for (const target of here.nbdListen) nbdUris.push((await nbd.listen(target)).uri);

  const controlPath = controlSocketPath(cfg, name, machine);
  let closing: Promise<void> | null = null;
  // nbd_device: the kernel's /dev/nbdN follows the GMD while it is AVAILABLE here (not as secondary).
  let attached: Attached | undefined;
  const attachDevice = (): void => {
    if (!here.nbdDevice || attached?.attached || device.state !== 'AVAILABLE' || device.attrs?.role === 'secondary') return;
    attached = attachExport(here.nbdDevice, DEFAULT_ATTACH_TIMEOUT_SEC, device.size(), transmissionFlags(device, false), (s) => nbd.serveSocket(s, name), log);
  };
  const detachDevice = (): Promise<void> => attached?.detach().catch((e: unknown) => log.error({ err: (e as Error).message }, 'detach failed')) ?? Promise.resolve();
  const close = (): Promise<void> => {
    closing ??= (async () => {
      systemd.stopping(`${name}: stopping`);
      await detachDevice();
      await device.stop('process exit').catch((e: unknown) => log.error({ err: (e as Error).message }, 'stop failed'));
      await nbd.close(2000).catch(() => undefined);
      await device.unconfigure().catch(() => undefined);
      await net.close().catch(() => undefined);
      await new Promise<void>((r) => control.close(() => r()));
    })();
    return closing;
  };
  const control: Server = await serveControl(controlPath, (op, args) => handleOp(op, args));

  async function handleOp(op: string, args: Record<string, unknown>): Promise<unknown> {
    switch (op) {
      case 'status': return device.status();
      case 'stat': return { stats: device.status().stats, peer: device.peer, time: Date.now() };
      case 'configure': await device.configure(); return device.status();
      case 'unconfigure': await device.unconfigure(); return device.status();
      case 'start': {
        for (const p of (args.down as string[] | undefined) ?? []) await device.down(p);
        const started = await device.start();
        attachDevice();
        return started;
      }
      case 'stop': await detachDevice(); await device.stop(); return device.status();
      case 'down': return device.down(String(args.peer));
      case 'dirty': await device.dirty(); return device.status();
      case 'clean': await device.clean(); return device.status();
      case 'cells': {
        const cells = Buffer.from(device.cells()).toString('base64');
        let peerCells: Record<string, string | null> = {};
        if (args.peers) {
          peerCells = Object.fromEntries(await Promise.all(device.peers.map(async (p) =>
            [p, await device.peerCells(p).then((c) => Buffer.from(c).toString('base64'), () => null)] as const)));
        }
        return { machine, cells, peerCells, regionSize: device.attrs?.regionSize, state: device.state };
      }
      case 'unify': {
        const r = await device.unify(String(args.master), Boolean(args.preview));
        return { unified: Buffer.from(r.unified).toString('base64'), cleared: r.cleared, master: args.master };
      }
      case 'takeover': {
        const other = await StateMap.open(String(args.map));
        try { await device.takeover(other); } finally { await other.close(); }
        return device.status();
      }
      case 'set': device.setAttributes(args as Partial<GmdAttributes>); return { ok: true };
      case 'verify': return verify();
      case 'shutdown': setImmediate(() => { void close().then(() => process.exit(0)); }); return { ok: true };
      default: throw new GeormError('GMD_ERR_BAD_REQUEST', `unknown operation '${op}'`);
    }
  }

  /** geo_verify (seed §6.4) for this GMD, across the machines through GeoMessage. */
  async function verify(): Promise<{ lines: string[]; errors: number; warnings: number }> {
    const lines: string[] = [];
    let errors = 0;
    let warnings = 0;
    const err = (s: string) => { errors++; lines.push(`ERROR: ${s}`); };
    const ok = (s: string) => lines.push(`ok: ${s}`);
    const g = findGmd(cfg, name);
    const mine = device.info();
    lines.push(`Verifying GeoMirror device ${name} (minor ${g.minor}) from ${machine}`);
    try {
      const st = await stat(cfg.cluster.keyFile);
      if (st.mode & 0o077) err(`cluster key ${cfg.cluster.keyFile} is readable by group or others`); else ok('cluster key file permissions');
    } catch { err(`cluster key ${cfg.cluster.keyFile} missing`); }
    const localMap = device.map;
    if (localMap && device.attrs) {
      if (localMap.regionCount * device.attrs.regionSize >= device.size()) ok(`state map covers the device (${localMap.regionCount} regions)`);
      else err('state map is too small for the device');
    } else { warnings++; lines.push('WARNING: GMD is DEFINED here; volume and state map not checked'); }
    const mySite = findMachine(cfg, machine).site;
    for (const p of device.peers) {
      const pm = findMachine(cfg, p);
      if (pm.site === mySite) err(`remote peer ${p} is at the same site (${mySite})`); else ok(`remote peer ${p} is at site ${pm.site}`);
      let info: PeerInfo;
      try {
        info = await device.peerInfo(p);
      } catch (e) { err(`remote peer ${p} not reachable through GeoMessage (${(e as Error).message})`); continue; }
      if (info.configDigest !== mine.configDigest) err(`configuration on ${p} differs from ${machine}'s (digest ${info.configDigest} vs ${mine.configDigest})`); else ok(`configuration identical on ${p}`);
      if (info.minor !== mine.minor) err(`minor ${mine.minor} here, ${info.minor} on ${p}`); else ok(`same minor number on ${p}`);
      if (info.state !== 'DEFINED' && mine.state !== 'DEFINED' && info.size !== mine.size) err(`size ${mine.size} here, ${info.size} on ${p}`); else ok(`same size on ${p}`);
      if (info.mode !== mine.mode) err(`mode ${mine.mode} here, ${info.mode} on ${p}`); else ok(`same mode on ${p}`);
      if (info.role === 'primary' && mine.role === 'primary') err(`both ${machine} and ${p} are primary`);
      else if (mine.mode === 'async' && !(new Set([info.role, mine.role]).has('primary') && new Set([info.role, mine.role]).has('secondary'))) err('an async GMD needs one primary and one secondary');
      else ok(`roles ${mine.role} here, ${info.role} on ${p}`);
      if (info.regionSize !== mine.regionSize && info.regionSize && mine.regionSize) err(`region size differs on ${p}`);
    }
    lines.push(errors ? `${errors} ERROR(S) found.` : 'No ERRORS:.');
    return { lines, errors, warnings };
  }

  if (opts.start) {
    for (const p of opts.down ?? []) await device.down(p);
    const r = await device.start();
    log.info({ gmd: name }, r.message);
    attachDevice();
  }
  // READY also starts the watchdog pings georm@.service expects (WatchdogSec).
  systemd.ready(`${name} on ${machine}: ${device.state}`);
  log.info({ gmd: name, machine, nbd: nbdUris, control: controlPath }, 'GMD process ready');
  return { device, nbdUris, controlPath, close };
}

/** Opens nothing: tells whether a state map file is missing (for `cfggmd` messages). */
export async function mapExists(path: string): Promise<boolean> {
  return stat(path).then(() => true, () => false);
}

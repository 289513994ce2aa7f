import { stat } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import type { Server } from 'node:net';
import { NbdServer, FileBackend, transmissionFlags } from '../../nbd/index.js';
import {
  loadConfig, findGmd, findMachine, gmdMachine, peersOf, endpointsOf, gatherFacts, compareFacts, formatVerify, configDigest,
  type ClusterConfig, type MachineFacts,
} from './cluster-config.js';
import { openGeoMessage, loadClusterKey, type GeoMessage, type PeerSpec } from '../geomessage/index.js';
import { serveNetStats, netStatSocketPath } from '../tools/netstat.js';
import { StateMap, StateMapError } from '../statemap/index.js';
import { systemd } from '../native/systemd.js';
import { nativeFileExtensions } from '../native/extensions.js';
import { attachExport, DEFAULT_ATTACH_TIMEOUT_SEC, type Attached } from '../native/attach.js';
import { GeormError } from '../util/errors.js';
import { createLogger, type Logger } from '../util/log.js';
import { serveControl } from './control.js';
import { GeoMirrorDevice, type GmdAttributes, type GmdResources } from './device/index.js';
import { ClusterRole, startManaged } from './promotion.js';
import { recordOutdatedAsync } from '../hageo/agent/outdated.js';

export interface RunOptions {
  config: string;
  machine?: string;
  /** Start after configuring (with gmddown for these peers). */
  start?: boolean;
  down?: string[];
  /** Stay DEFINED (do not open the volume and map). */
  defined?: boolean;
  /**
   * Run under the cluster agent ocf:georm:gmd (HAGEO): unpromoted role at configure, no NBD export
   * and no nbd_device until the agent promotes this side (promotion.ts).
   */
  clusterManaged?: boolean;
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

/** Runs one GMD in this process: GeoMessage endpoint, NBD server, control socket (`georm gmd run`). */
export async function runGmd(name: string, opts: RunOptions): Promise<RunningGmd> {
  const log = opts.logger ?? createLogger(`gmd:${name}`);
  let cfg = await loadConfig(opts.config);
  const digest = configDigest(cfg);
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
    // fallocate and SEEK_DATA from the addon (when it loaded): TRIM punches holes, WRITE_ZEROES
    // uses ZERO_RANGE, FAST_ZERO is possible. See GeoMirrorDevice.trim for how trims stay mirrored.
    const local = await FileBackend.open(gm.volume, { readOnly: false, extensions: nativeFileExtensions() });
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
    facts: () => gatherFacts(cfg, machine),
  });
  device.attachNetEvents();
  // HAGEO: the agent, not the file, says which side is promoted; both start unpromoted.
  const fence = opts.clusterManaged && cfg.hageo?.fencing === 'resource-only'
    ? { record: (peer: string) => recordOutdatedAsync(name, peer, machine), fenceTimeoutMs: (cfg.hageo.fenceTimeout ?? 30) * 1000, onEvent: (l: 'info' | 'warn' | 'error', m: string) => device.event(l, m) }
    : undefined;
  const clusterRole = opts.clusterManaged ? new ClusterRole({ device, listen: here.nbdListen, nbdDevice: here.nbdDevice, fence, log }) : null;
  if (clusterRole) device.setAttributes({ role: ClusterRole.unpromotedRole(gmd.mode) });
  if (!opts.defined) {
    // A volume or state map that cannot be opened leaves the GMD DEFINED with the reason in its
    // events (and in the next start's error) rather than ending the process.
    await device.configure().catch((e: unknown) => device.event('error', `configure failed: ${(e as Error).message}`));
  }

  const nbd = new NbdServer({ exports: [{ name, description: `GeoMirror device ${name}`, backend: device }] });
  const nbdUris: string[] = [];
  if (!clusterRole) for (const target of here.nbdListen) nbdUris.push((await nbd.listen(target)).uri);

  const controlPath = controlSocketPath(cfg, name, machine);
  let closing: Promise<void> | null = null;
  // nbd_device: the kernel's /dev/nbdN follows the GMD while it is AVAILABLE here (not as secondary).
  let attached: Attached | undefined;
  const attachDevice = (): void => {
    if (clusterRole || !here.nbdDevice || attached?.attached || device.state !== 'AVAILABLE' || device.attrs?.role === 'secondary') return;
    attached = attachExport(here.nbdDevice, DEFAULT_ATTACH_TIMEOUT_SEC, device.size(), transmissionFlags(device, false), (s) => nbd.serveSocket(s, name), log);
  };
  const detachDevice = (): Promise<void> => attached?.detach().catch((e: unknown) => log.error({ err: (e as Error).message }, 'detach failed')) ?? Promise.resolve();
  const close = (): Promise<void> => {
    closing ??= (async () => {
      systemd.stopping(`${name}: stopping`);
      await clusterRole?.hide();
      await detachDevice();
      await device.stop('process exit').catch((e: unknown) => log.error({ err: (e as Error).message }, 'stop failed'));
      await nbd.close(2000).catch(() => undefined);
      await device.unconfigure().catch(() => undefined);
      await net.close().catch(() => undefined);
      await new Promise<void>((r) => control.close(() => r()));
      await new Promise<void>((r) => netStats.close(() => r()));
    })();
    return closing;
  };
  const control: Server = await serveControl(controlPath, (op, args) => handleOp(op, args));
  // `georm netstat` / krpcstat find every GeoMessage process by its stats socket in run_dir.
  const netStats: Server = await serveNetStats(() => net.stats(), netStatSocketPath(findMachine(cfg, machine).runDir, name));

  function managed(): ClusterRole {
    if (!clusterRole) throw new GeormError('GMD_ERR_BAD_REQUEST', `${name} on ${machine} is not cluster-managed (run it with --cluster-managed, as ocf:georm:gmd does)`);
    return clusterRole;
  }

  async function handleOp(op: string, args: Record<string, unknown>): Promise<unknown> {
    switch (op) {
      case 'status': return device.status();
      case 'stat': return { stats: device.status().stats, peer: device.peer, time: Date.now() };
      case 'netstat': return net.stats();
      case 'configure': await device.configure(); return device.status();
      case 'unconfigure': await device.unconfigure(); return device.status();
      case 'start': {
        for (const p of (args.down as string[] | undefined) ?? []) await device.down(p);
        const started = clusterRole ? await startManaged(device) : await device.start();
        attachDevice();
        return started;
      }
      case 'stop': await clusterRole?.hide(); await detachDevice(); await device.stop(); return device.status();
      // HAGEO (promotion.ts): only for a process run with --cluster-managed.
      case 'ha-status': return managed().status();
      case 'promote': return managed().promote();
      case 'demote': return managed().demote();
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

  /** geo_verify (seed §6.4): facts of this machine and of every peer (asked over GeoMessage), compared. */
  async function verify(): Promise<{ text: string; errors: number; warnings: number; findings: unknown[] }> {
    const facts: MachineFacts[] = [await gatherFacts(cfg, machine)];
    for (const p of device.peers) {
      const f = await device.peerFacts(p).catch(() => null);
      if (f) facts.push(f as MachineFacts);
    }
    const findings = compareFacts(cfg, facts);
    const errors = findings.filter((f) => f.level === 'error').length;
    return { text: formatVerify(findings), errors, warnings: findings.length - errors, findings };
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

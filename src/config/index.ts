import { readFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { dirname, isAbsolute, resolve } from 'node:path';
import { parse as parseToml, TomlError } from 'smol-toml';
import type { z } from 'zod';
import { TomlPositions, type TomlPath } from './positions.js';
import { ConfigSchema, type RawConfig } from './schema.js';
import {
  ConfigError, type ClusterConfig, type ClusterConfigInput, type ConfigIssue, type Gmd, type GmdMachine, type HageoSettings, type Machine,
} from './types.js';
import { crossCheck, type RawIssue } from './validate.js';

export * from './types.js';
export { MODES, ROLES, FENCING } from './schema.js';
export { corosyncLinks, type CorosyncLink } from './cluster-links.js';

/**
 * Parses and validates a cluster file. Relative paths in it (key_file, run_dir, volume, state_map,
 * unix: sockets) are resolved against the file's directory. Throws ConfigError whose message has a
 * `file:line:col: message` line for every problem found (syntax, schema, cross-references).
 */
export function parseConfig(text: string, source: string): ClusterConfig {
  let doc: Record<string, unknown>;
  try {
    doc = parseToml(text) as Record<string, unknown>;
  } catch (e) {
    if (e instanceof TomlError) {
      const [first, ...snippet] = e.message.split('\n');
      const detail = (first ?? '').replace(/^Invalid TOML document:\s*/, '');
      const issue: ConfigIssue = { file: source, line: e.line, col: e.column, path: '', message: `TOML syntax error: ${detail}` };
      const err = new ConfigError('CONFIG_ERR_SYNTAX', [issue], { cause: e });
      if (snippet.some((l) => l.trim())) err.message += `\n${snippet.join('\n').replace(/\n+$/, '')}`;
      throw err;
    }
    throw e;
  }
  const pos = new TomlPositions(text);
  const toIssue = (path: TomlPath, message: string, at?: TomlPath): ConfigIssue => {
    const p = pos.find(at ?? path);
    return { file: source, line: p.line, col: p.col, path: showPath(path, doc), message };
  };

  const parsed = ConfigSchema.safeParse(doc);
  if (!parsed.success) {
    const issues = parsed.error.issues.flatMap((i) => zodIssue(i, pos, doc).map((r) => toIssue(r.path, r.message, r.at)));
    throw new ConfigError('CONFIG_ERR_INVALID', sortIssues(issues));
  }
  const cross = crossCheck(parsed.data);
  if (cross.length) throw new ConfigError('CONFIG_ERR_INVALID', sortIssues(cross.map((i) => toIssue(i.path, i.message))));
  return normalise(parsed.data, source);
}

export async function loadConfig(path: string): Promise<ClusterConfig> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    throw new ConfigError('CONFIG_ERR_NOT_FOUND', [{ file: path, line: 1, col: 1, path: '', message: `cannot read the configuration: ${(e as Error).message}` }], { cause: e });
  }
  return parseConfig(text, resolve(path));
}

type ZodIssue = z.core.$ZodIssue;

/** Turns one zod issue into messages an administrator can act on, anchored where they belong. */
function zodIssue(i: ZodIssue, pos: TomlPositions, doc: unknown): Array<RawIssue & { at?: TomlPath }> {
  const path = i.path.filter((p): p is string | number => typeof p !== 'symbol');
  if (i.code === 'unrecognized_keys') {
    return i.keys.map((k) => ({ path: [...path, k], message: `unknown key '${k}'` }));
  }
  const last = path[path.length - 1];
  if (i.code === 'invalid_type' && valueAt(doc, path) === undefined && typeof last === 'string') {
    const table = path.slice(0, -1);
    return [{ path, at: pos.get(table) ? table : path, message: `missing required key '${last}'` }];
  }
  return [{ path, message: i.message }];
}

function valueAt(doc: unknown, path: TomlPath): unknown {
  let v: unknown = doc;
  for (const p of path) {
    if (v === null || typeof v !== 'object') return undefined;
    v = (v as Record<string | number, unknown>)[p];
  }
  return v;
}

/** `gmd[0].machine[1].role`, with the element's name when it has one: `gmd[0](data10gmd).machine[1](beta).role`. */
function showPath(path: TomlPath, doc: unknown): string {
  let out = '';
  for (let k = 0; k < path.length; k++) {
    const p = path[k]!;
    if (typeof p === 'number') {
      out += `[${p}]`;
      const el = valueAt(doc, path.slice(0, k + 1)) as Record<string, unknown> | undefined;
      const label = el && typeof el === 'object' ? (el.name ?? el.machine ?? el.network) : undefined;
      if (typeof label === 'string' && k < path.length - 1) out += `(${label})`;
    } else {
      out += out ? `.${p}` : p;
    }
  }
  return out;
}

function sortIssues(issues: ConfigIssue[]): ConfigIssue[] {
  return issues.sort((a, b) => a.line - b.line || a.col - b.col);
}

function normalise(c: RawConfig, source: string): ClusterConfig {
  const base = dirname(resolve(source));
  const abs = (p: string) => (isAbsolute(p) ? p : resolve(base, p));
  const absListen = (l: string) => (l.startsWith('unix:') ? `unix:${abs(l.slice(5))}` : l);
  const machines: Machine[] = c.machine.map((m) => ({
    name: m.name, site: m.site, promoteFailureTimeout: m.promote_failure_timeout, runDir: abs(m.run_dir),
    interfaces: m.interface.map((i) => ({ network: i.network, address: i.address, port: i.port })),
  }));
  const runDirOf = new Map(machines.map((m) => [m.name, m.runDir] as const));
  const h = c.hageo;
  const hageo: HageoSettings = {
    clusterName: h?.cluster_name ?? HAGEO_DEFAULTS.clusterName,
    fencing: h?.fencing ?? HAGEO_DEFAULTS.fencing,
    fenceTimeout: h?.fence_timeout ?? HAGEO_DEFAULTS.fenceTimeout,
    token: h?.token ?? HAGEO_DEFAULTS.token,
    heartbeat: (h?.heartbeat ?? []).map((x) => ({ machine: x.machine, address: x.address })),
  };
  return {
    source,
    cluster: { name: c.cluster.name, keyFile: abs(c.cluster.key_file) },
    sites: c.site.map((s) => ({ name: s.name })),
    networks: c.network.map((n) => ({ name: n.name, mtu: n.mtu })),
    machines,
    gmds: c.gmd.map((g) => ({
      name: g.name, minor: g.minor, mode: g.mode, regionSize: g.region_size, syncRate: g.sync_rate, hwm: g.hwm,
      resyncRateLimit: g.resync_rate_limit,
      machines: g.machine.map((gm) => {
        const out: GmdMachine = {
          machine: gm.machine, volume: abs(gm.volume), stateMap: abs(gm.state_map), role: gm.role,
          nbdListen: (gm.nbd_listen ?? [`unix:${runDirOf.get(gm.machine)}/${g.name}.nbd`]).map(absListen),
        };
        if (gm.nbd_device !== undefined) out.nbdDevice = gm.nbd_device;
        return out;
      }),
    })),
    hageo,
  };
}

/** `[hageo]`'s defaults, what a file without the table gets. */
export const HAGEO_DEFAULTS: Readonly<HageoSettings> = Object.freeze({
  clusterName: 'georm', fencing: 'resource-only', fenceTimeout: 30, token: 3000, heartbeat: [],
});

// ---- lookups ---------------------------------------------------------------------------------
// These throw ConfigError (CONFIG_ERR_UNKNOWN_MACHINE / _GMD, exit code 1) naming what exists, so
// callers can use the result directly; use cfg.machines.find(…) to test for presence.

export function findMachine(cfg: ClusterConfig, name: string): Machine {
  const m = cfg.machines.find((x) => x.name === name);
  if (!m) throw unknown(cfg, 'CONFIG_ERR_UNKNOWN_MACHINE', `machine '${name}' is not defined in ${cfg.source} (machines: ${cfg.machines.map((x) => x.name).join(', ')}; use --machine)`);
  return m;
}

export function findGmd(cfg: ClusterConfig, name: string): Gmd {
  const g = cfg.gmds.find((x) => x.name === name);
  if (!g) throw unknown(cfg, 'CONFIG_ERR_UNKNOWN_GMD', `GMD '${name}' is not defined in ${cfg.source} (GMDs: ${cfg.gmds.map((x) => x.name).join(', ') || 'none'})`);
  return g;
}

export function gmdMachine(gmd: Gmd, machine: string): GmdMachine {
  const m = gmd.machines.find((x) => x.machine === machine);
  if (!m) {
    throw new ConfigError('CONFIG_ERR_UNKNOWN_MACHINE', [{ file: '', line: 0, col: 0, path: '',
      message: `GMD '${gmd.name}' has no definition for machine '${machine}' (it is on ${gmd.machines.map((x) => x.machine).join(', ')})` }]);
  }
  return m;
}

/** The remote peers of `machine` for a GMD: its machines at the other site. */
export function peersOf(cfg: ClusterConfig, gmd: Gmd | string, machine: string): Machine[] {
  return gmdPeers(cfg, gmd, machine, false);
}

/** Machines of the GMD at the same site as `machine` (local takeover candidates, seed §2.2). */
export function localPeersOf(cfg: ClusterConfig, gmd: Gmd | string, machine: string): Machine[] {
  return gmdPeers(cfg, gmd, machine, true);
}

function gmdPeers(cfg: ClusterConfig, gmd: Gmd | string, machine: string, sameSite: boolean): Machine[] {
  const g = typeof gmd === 'string' ? findGmd(cfg, gmd) : gmd;
  const self = findMachine(cfg, machine);
  return g.machines.map((gm) => findMachine(cfg, gm.machine)).filter((m) => m.name !== self.name && (m.site === self.site) === sameSite);
}

/** This machine: the name given (--machine), else $GEORM_MACHINE, else the host name. */
export function localMachine(cfg: ClusterConfig, name?: string): Machine {
  return findMachine(cfg, name ?? process.env.GEORM_MACHINE ?? hostname());
}

/** GeoMessage endpoints of a machine for one GMD process: each interface at base port + minor. */
export function endpointsOf(cfg: ClusterConfig, machine: string, minor: number):
  Array<{ network: string; address: string; port: number; mtu: number }> {
  const m = findMachine(cfg, machine);
  return m.interfaces.map((i) => ({
    network: i.network, address: i.address, port: i.port + minor,
    mtu: cfg.networks.find((n) => n.name === i.network)?.mtu ?? 1500,
  }));
}

function unknown(cfg: ClusterConfig, code: 'CONFIG_ERR_UNKNOWN_MACHINE' | 'CONFIG_ERR_UNKNOWN_GMD', message: string): ConfigError {
  return new ConfigError(code, [{ file: cfg.source, line: 0, col: 0, path: '', message }]);
}

// ---- rendering -------------------------------------------------------------------------------

const q = (s: string) => JSON.stringify(s);

function sizeText(n: number): string {
  for (const [unit, f] of [['G', 1024 ** 3], ['M', 1024 ** 2], ['K', 1024]] as const) {
    if (n > 0 && n % f === 0) return q(`${n / f}${unit}`);
  }
  return q(String(n));
}

/** Writes a configuration as TOML (what `georm demo` writes); parseConfig reads it back unchanged. */
export function renderConfig(cfg: ClusterConfigInput): string {
  const out: string[] = ['# georm cluster configuration: identical on every machine', '', '[cluster]', `name = ${q(cfg.cluster.name)}`];
  if (cfg.cluster.keyFile !== undefined) out.push(`key_file = ${q(cfg.cluster.keyFile)}`);
  for (const s of cfg.sites) out.push('', '[[site]]', `name = ${q(s.name)}`);
  for (const n of cfg.networks) {
    out.push('', '[[network]]', `name = ${q(n.name)}`);
    if (n.mtu !== undefined) out.push(`mtu = ${n.mtu}`);
  }
  for (const m of cfg.machines) {
    out.push('', '[[machine]]', `name = ${q(m.name)}`, `site = ${q(m.site)}`);
    if (m.promoteFailureTimeout !== undefined) out.push(`promote_failure_timeout = ${m.promoteFailureTimeout}`);
    if (m.runDir !== undefined) out.push(`run_dir = ${q(m.runDir)}`);
    for (const i of m.interfaces) {
      out.push('  [[machine.interface]]', `  network = ${q(i.network)}`, `  address = ${q(i.address)}`, `  port = ${i.port}`);
    }
  }
  for (const g of cfg.gmds) {
    out.push('', '[[gmd]]', `name = ${q(g.name)}`, `minor = ${g.minor}`, `mode = ${q(g.mode)}`);
    if (g.regionSize !== undefined) out.push(`region_size = ${sizeText(g.regionSize)}`);
    if (g.syncRate !== undefined) out.push(`sync_rate = ${sizeText(g.syncRate)}`);
    if (g.hwm !== undefined) out.push(`hwm = ${sizeText(g.hwm)}`);
    if (g.resyncRateLimit !== undefined) out.push(`resync_rate_limit = ${sizeText(g.resyncRateLimit)}`);
    for (const m of g.machines) {
      out.push('  [[gmd.machine]]', `  machine = ${q(m.machine)}`, `  volume = ${q(m.volume)}`, `  state_map = ${q(m.stateMap)}`, `  role = ${q(m.role)}`);
      if (m.nbdListen !== undefined) out.push(`  nbd_listen = [${m.nbdListen.map(q).join(', ')}]`);
      if (m.nbdDevice !== undefined) out.push(`  nbd_device = ${q(m.nbdDevice)}`);
    }
  }
  // [hageo] only with what differs from the defaults: a parsed file always carries the settings,
  // and the table's presence turns on the Corosync checks (validate.ts), which a loopback demo fails.
  const h = cfg.hageo ?? {};
  const d = HAGEO_DEFAULTS;
  const hageoLines: string[] = [];
  if (h.clusterName !== undefined && h.clusterName !== d.clusterName) hageoLines.push(`cluster_name = ${q(h.clusterName)}`);
  if (h.fencing !== undefined && h.fencing !== d.fencing) hageoLines.push(`fencing = ${q(h.fencing)}`);
  if (h.fenceTimeout !== undefined && h.fenceTimeout !== d.fenceTimeout) hageoLines.push(`fence_timeout = ${h.fenceTimeout}`);
  if (h.token !== undefined && h.token !== d.token) hageoLines.push(`token = ${h.token}`);
  for (const hb of h.heartbeat ?? []) hageoLines.push('  [[hageo.heartbeat]]', `  machine = ${q(hb.machine)}`, `  address = ${q(hb.address)}`);
  if (hageoLines.length) out.push('', '[hageo]', ...hageoLines);
  return `${out.join('\n')}\n`;
}

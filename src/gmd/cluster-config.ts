/**
 * The GMD's view of the cluster configuration file (docs/contracts.md, src/config).
 *
 * Interim: src/config (schema validation with line-precise errors) is being built in parallel;
 * until it lands this reads the same TOML layout with smol-toml and checks what the GMD relies on.
 * Once src/config is on main, this file re-exports it and nothing else changes.
 */
import { readFile } from 'node:fs/promises';
import { parse } from 'smol-toml';
import { GeormError } from '../util/errors.js';
import { parseSize } from '../util/size.js';

export interface Interface { network: string; address: string; port: number }
export interface Machine { name: string; site: string; promoteFailureTimeout: number; runDir: string; interfaces: Interface[] }
export interface GmdMachine { machine: string; volume: string; stateMap: string; role: 'primary' | 'secondary' | 'none'; nbdListen: string[]; nbdDevice?: string }
export interface Gmd {
  name: string; minor: number; mode: 'sync' | 'mwc' | 'async'; regionSize: number; syncRate: number; hwm: number;
  resyncRateLimit: number; machines: GmdMachine[];
}
export interface ClusterConfig {
  source: string;
  cluster: { name: string; keyFile: string };
  sites: Array<{ name: string }>;
  networks: Array<{ name: string; mtu: number }>;
  machines: Machine[];
  gmds: Gmd[];
}

function bad(source: string, msg: string): GeormError {
  return new GeormError('CONFIG_ERR_INVALID', `${source}: ${msg}`, { exitCode: 1 });
}

type Tbl = Record<string, unknown>;
const arr = (v: unknown): Tbl[] => (Array.isArray(v) ? v as Tbl[] : []);
function str(source: string, t: Tbl, k: string, where: string, dflt?: string): string {
  const v = t[k] ?? dflt;
  if (typeof v !== 'string' || !v) throw bad(source, `${where}: '${k}' must be a non-empty string`);
  return v;
}
function int(source: string, t: Tbl, k: string, where: string, dflt?: number): number {
  const v = t[k] ?? dflt;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) throw bad(source, `${where}: '${k}' must be a non-negative integer`);
  return v;
}
const size = (source: string, t: Tbl, k: string, where: string, dflt: string): number => {
  try { return parseSize((t[k] as string | number | undefined) ?? dflt, `${where} ${k}`); } catch (e) { throw bad(source, (e as Error).message); }
};

export function parseConfig(text: string, source: string): ClusterConfig {
  let doc: Tbl;
  try { doc = parse(text) as Tbl; } catch (e) { throw bad(source, (e as Error).message); }
  const cl = (doc.cluster ?? {}) as Tbl;
  const cfg: ClusterConfig = {
    source,
    cluster: { name: str(source, cl, 'name', '[cluster]'), keyFile: str(source, cl, 'key_file', '[cluster]', '/etc/georm/cluster.key') },
    sites: arr(doc.site).map((s, i) => ({ name: str(source, s, 'name', `[[site]] #${i + 1}`) })),
    networks: arr(doc.network).map((n, i) => ({ name: str(source, n, 'name', `[[network]] #${i + 1}`), mtu: int(source, n, 'mtu', `network`, 1500) })),
    machines: arr(doc.machine).map((m, i) => {
      const w = `[[machine]] #${i + 1}`;
      return {
        name: str(source, m, 'name', w), site: str(source, m, 'site', w),
        promoteFailureTimeout: int(source, m, 'promote_failure_timeout', w, 30), runDir: str(source, m, 'run_dir', w, '/run/georm'),
        interfaces: arr(m.interface).map((f) => ({ network: str(source, f, 'network', w), address: str(source, f, 'address', w), port: int(source, f, 'port', w) })),
      };
    }),
    gmds: arr(doc.gmd).map((g, i) => {
      const w = `[[gmd]] #${i + 1}`;
      const mode = str(source, g, 'mode', w, 'mwc');
      if (!['sync', 'mwc', 'async'].includes(mode)) throw bad(source, `${w}: mode must be sync, mwc or async`);
      return {
        name: str(source, g, 'name', w), minor: int(source, g, 'minor', w), mode: mode as Gmd['mode'],
        regionSize: size(source, g, 'region_size', w, '32K'), syncRate: size(source, g, 'sync_rate', w, '64K'),
        hwm: size(source, g, 'hwm', w, '128K'), resyncRateLimit: size(source, g, 'resync_rate_limit', w, '0'),
        machines: arr(g.machine).map((m) => {
          const role = str(source, m, 'role', w);
          if (!['primary', 'secondary', 'none'].includes(role)) throw bad(source, `${w}: role must be primary, secondary or none`);
          const listen = m.nbd_listen;
          return {
            machine: str(source, m, 'machine', w), volume: str(source, m, 'volume', w), stateMap: str(source, m, 'state_map', w),
            role: role as GmdMachine['role'], nbdListen: Array.isArray(listen) ? listen.map(String) : [],
            ...(typeof m.nbd_device === 'string' ? { nbdDevice: m.nbd_device } : {}),
          };
        }),
      };
    }),
  };
  for (const g of cfg.gmds) for (const m of g.machines) if (!cfg.machines.some((x) => x.name === m.machine)) throw bad(source, `gmd ${g.name}: unknown machine '${m.machine}'`);
  return cfg;
}

export async function loadConfig(path: string): Promise<ClusterConfig> {
  let text: string;
  try { text = await readFile(path, 'utf8'); } catch (e) {
    throw new GeormError('CONFIG_ERR_NOT_FOUND', `cannot read configuration ${path}: ${(e as Error).message}`, { exitCode: 1 });
  }
  return parseConfig(text, path);
}

export function findMachine(cfg: ClusterConfig, name: string): Machine {
  const m = cfg.machines.find((x) => x.name === name);
  if (!m) throw new GeormError('CONFIG_ERR_UNKNOWN_MACHINE', `machine '${name}' is not defined in ${cfg.source} (use --machine)`, { exitCode: 1 });
  return m;
}

export function findGmd(cfg: ClusterConfig, name: string): Gmd {
  const g = cfg.gmds.find((x) => x.name === name);
  if (!g) throw new GeormError('CONFIG_ERR_UNKNOWN_GMD', `GMD '${name}' is not defined in ${cfg.source}`, { exitCode: 1 });
  return g;
}

export function gmdMachine(g: Gmd, machine: string): GmdMachine {
  const m = g.machines.find((x) => x.machine === machine);
  if (!m) throw new GeormError('CONFIG_ERR_UNKNOWN_MACHINE', `GMD '${g.name}' has no definition for machine '${machine}'`, { exitCode: 1 });
  return m;
}

/** Machines at the other site(s) that hold this GMD: its remote peers. */
export function peersOf(cfg: ClusterConfig, g: Gmd, machine: string): Machine[] {
  const site = findMachine(cfg, machine).site;
  return g.machines.map((m) => findMachine(cfg, m.machine)).filter((m) => m.site !== site);
}

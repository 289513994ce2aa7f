import { GeormError } from '../util/errors.js';
import type { Fencing, Mode, Role } from './schema.js';

export type { Fencing, Mode, Role };

export interface Site { name: string }
export interface Network { name: string; mtu: number }
export interface Interface { network: string; address: string; port: number }
export interface Machine {
  name: string;
  site: string;
  /** Seconds without contact before a communication failure becomes a gmddown (0 = never). */
  promoteFailureTimeout: number;
  runDir: string;
  interfaces: Interface[];
}
export interface GmdMachine {
  machine: string;
  volume: string;
  stateMap: string;
  role: Role;
  nbdListen: string[];
  nbdDevice?: string;
}
export interface Gmd {
  name: string;
  minor: number;
  mode: Mode;
  /** Bytes. */
  regionSize: number;
  syncRate: number;
  hwm: number;
  /** Bytes per second, 0 = unlimited. */
  resyncRateLimit: number;
  machines: GmdMachine[];
}
/** `[hageo]` with its defaults applied (present even when the file has no `[hageo]` table). */
export interface HageoSettings {
  /** Corosync's and Pacemaker's cluster name (default "georm"). */
  clusterName: string;
  /** resource-only: a primary that loses its peer records it outdated in the CIB (with quorum)
   *  before acknowledging writes the peer lacks; none: it does not (default resource-only). */
  fencing: Fencing;
  /** Seconds a primary holds writes waiting to record its peer outdated before failing them (default 30). */
  fenceTimeout: number;
  /** Corosync totem token, ms (default 3000). */
  token: number;
  /** Heartbeat-only knet link: one address per machine, or none at all. */
  heartbeat: Array<{ machine: string; address: string }>;
}
export interface ClusterConfig {
  /** The file it was read from (or the name given to parseConfig). */
  source: string;
  cluster: { name: string; keyFile: string };
  sites: Site[];
  networks: Network[];
  machines: Machine[];
  gmds: Gmd[];
  hageo: HageoSettings;
}

/** What renderConfig takes: a ClusterConfig without `source`, defaults optional. */
export interface ClusterConfigInput {
  cluster: { name: string; keyFile?: string };
  sites: Site[];
  networks: Array<{ name: string; mtu?: number }>;
  machines: Array<Omit<Machine, 'promoteFailureTimeout' | 'runDir'> & { promoteFailureTimeout?: number; runDir?: string }>;
  gmds: Array<Omit<Gmd, 'regionSize' | 'syncRate' | 'hwm' | 'resyncRateLimit' | 'machines'> & {
    regionSize?: number; syncRate?: number; hwm?: number; resyncRateLimit?: number;
    machines: Array<Omit<GmdMachine, 'nbdListen'> & { nbdListen?: string[] }>;
  }>;
  /** Written as a `[hageo]` table when given; fields left out keep their defaults. */
  hageo?: Partial<HageoSettings>;
}

export interface ConfigIssue { file: string; line: number; col: number; path: string; message: string }

export type ConfigErrorCode = 'CONFIG_ERR_SYNTAX' | 'CONFIG_ERR_INVALID' | 'CONFIG_ERR_NOT_FOUND' | 'CONFIG_ERR_UNKNOWN_MACHINE' | 'CONFIG_ERR_UNKNOWN_GMD';

/**
 * A configuration problem. `message` holds one `file:line:col: message` line per issue (editors and
 * CI annotate these), `issues` the same as data for `--json`.
 */
export class ConfigError extends GeormError {
  declare readonly code: ConfigErrorCode;
  readonly issues: ConfigIssue[];
  constructor(code: ConfigErrorCode, issues: ConfigIssue[], options?: { cause?: unknown }) {
    super(code, issues.map(formatIssue).join('\n'), { ...options, exitCode: 1 });
    this.name = 'ConfigError';
    this.issues = issues;
  }
}

/** `file:line:col: path: message`; lookups that have no position (line 0) print the message alone. */
export function formatIssue(i: ConfigIssue): string {
  if (i.line === 0) return i.message;
  return `${i.file}:${i.line}:${i.col}: ${i.path ? `${i.path}: ` : ''}${i.message}`;
}

/**
 * The georm cluster file of a test lab: machines node1..nodeN alternating between sites east and
 * west, one geographic network per link (geo1, geo2, …) with node K at 10.<70+link>.0.K, an
 * optional heartbeat-only link (10.79.0.K), and the GMDs asked for (default: one mwc GMD `labgmd`
 * with role none on node1 and node2, volumes under each node's state directory). `[hageo]` is
 * written so `georm config check` runs the Corosync checks on it.
 */
import { join } from 'node:path';
import type { ClusterConfigInput, Mode } from '../../config/index.js';

export interface LabGmd {
  name: string;
  minor: number;
  mode: Mode;
  /** Machines holding it, with their roles (default node1 and node2, role none; async: node1 primary). */
  machines?: Array<{ machine: string; role: 'primary' | 'secondary' | 'none' }>;
}

export interface LabClusterFileOptions {
  dir: string;
  nodes: number;
  /** Geographic networks, each a knet link (default 2). */
  links: number;
  heartbeat: boolean;
  token: number;
  fenceTimeout?: number;
  gmds: LabGmd[];
}

export const nodeName = (k: number) => `node${k}`;
export const geoAddress = (link: number, k: number) => `10.${70 + link}.0.${k}`;
export const heartbeatAddress = (k: number) => `10.79.0.${k}`;
export const GEOMESSAGE_PORT = 7400;

/** Per-node directories on the host: state that the node sees at its usual paths, and its volumes. */
export const nodeDir = (dir: string, name: string) => join(dir, 'nodes', name);

export function labClusterFile(o: LabClusterFileOptions): ClusterConfigInput {
  const names = Array.from({ length: o.nodes }, (_, i) => nodeName(i + 1));
  const cfg: ClusterConfigInput = {
    cluster: { name: 'lab', keyFile: join(o.dir, 'cluster.key') },
    sites: [{ name: 'east' }, { name: 'west' }],
    networks: Array.from({ length: o.links }, (_, l) => ({ name: `geo${l + 1}` })),
    machines: names.map((name, i) => ({
      name, site: i % 2 === 0 ? 'east' : 'west',
      interfaces: Array.from({ length: o.links }, (_, l) => ({ network: `geo${l + 1}`, address: geoAddress(l + 1, i + 1), port: GEOMESSAGE_PORT })),
    })),
    gmds: o.gmds.map((g) => ({
      name: g.name, minor: g.minor, mode: g.mode,
      machines: (g.machines ?? [
        { machine: names[0]!, role: g.mode === 'async' ? 'primary' as const : 'none' as const },
        { machine: names[1]!, role: g.mode === 'async' ? 'secondary' as const : 'none' as const },
      ]).map((m) => ({
        machine: m.machine, role: m.role,
        volume: join(nodeDir(o.dir, m.machine), 'data', `${g.name}.img`),
        stateMap: join(nodeDir(o.dir, m.machine), 'data', `${g.name}.map`),
      })),
    })),
    hageo: { clusterName: 'georm-lab', token: o.token, ...(o.fenceTimeout !== undefined ? { fenceTimeout: o.fenceTimeout } : {}) },
  };
  if (o.heartbeat) cfg.hageo!.heartbeat = names.map((machine, i) => ({ machine, address: heartbeatAddress(i + 1) }));
  return cfg;
}

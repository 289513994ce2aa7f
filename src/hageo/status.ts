/**
 * `georm hageo status`: the cluster as georm sees it, from this node — quorum and DC, each node
 * online/offline/standby, each knet link's state towards every other node (named after the
 * cluster file's networks), and each GMD's promotable clone: where it is promoted, where
 * unpromoted, where it failed. Reads crm_mon's XML and corosync-cfgtool; changes nothing.
 */
import { spawn } from 'node:child_process';
import { corosyncLinks, type ClusterConfig } from '../config/index.js';
import { GeormError } from '../util/errors.js';
import { cloneId } from './cib.js';
import { parseCfgtoolStatus } from './cfgtool.js';
import { parseCrmMon, type CrmStatus } from './crm-mon.js';

export interface HageoStatus {
  cluster: string;
  quorum: boolean;
  dc: string | null;
  nodes: Array<{ name: string; state: 'online' | 'offline' | 'standby' | 'unclean' }>;
  /** Per knet link: where it comes from and each other node's state, as this node sees it. */
  links: Array<{ link: number; source: string; peers: Record<string, string> }> | null;
  gmds: Array<{ name: string; clone: string; promoted: string[]; unpromoted: string[]; failed: string[]; stopped: boolean }>;
}

function capture(cmd: string, args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => { stdout += d; });
    child.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d; });
    child.once('error', (e) => resolve({ code: 127, stdout, stderr: e.message }));
    child.once('close', (code) => resolve({ code, stdout, stderr }));
  });
}

export function buildStatus(cfg: ClusterConfig, crm: CrmStatus, cfgtool: string | null): HageoStatus {
  const nodeIdToName = new Map(cfg.machines.map((m, i) => [i + 1, m.name] as const));
  let links: HageoStatus['links'] = null;
  if (cfgtool !== null) {
    const sources = corosyncLinks({ networks: cfg.networks.map((n) => n.name), machines: cfg.machines.map((m) => ({ name: m.name, interfaces: m.interfaces })), heartbeat: cfg.hageo.heartbeat }).links;
    links = parseCfgtoolStatus(cfgtool).links.map((l) => ({
      link: l.link,
      source: sources.find((s) => s.linknumber === l.link)?.source ?? '?',
      peers: Object.fromEntries([...l.peers].filter(([, st]) => st !== 'localhost').map(([id, st]) => [nodeIdToName.get(id) ?? `nodeid ${id}`, st])),
    }));
  }
  return {
    cluster: cfg.hageo.clusterName,
    quorum: crm.quorum,
    dc: crm.dc ?? null,
    nodes: crm.nodes.map((n) => ({ name: n.name, state: n.unclean ? 'unclean' : !n.online ? 'offline' : n.standby ? 'standby' : 'online' })),
    links,
    gmds: cfg.gmds.map((g) => {
      const clone = cloneId(g.name);
      const inst = crm.resources.filter((r) => r.clone === clone);
      const on = (role: string) => inst.filter((r) => r.role === role && r.node).map((r) => r.node!);
      return { name: g.name, clone, promoted: on('Promoted'), unpromoted: on('Unpromoted'),
        failed: inst.filter((r) => r.failed && r.node).map((r) => r.node!), stopped: inst.every((r) => !r.active) };
    }),
  };
}

/** Runs crm_mon and corosync-cfgtool on this node. Throws HAGEO_ERR_NOT_RUNNING when crm_mon cannot answer. */
export async function gatherStatus(cfg: ClusterConfig): Promise<HageoStatus> {
  const mon = await capture('crm_mon', ['--output-as=xml']);
  if (mon.code !== 0) {
    throw new GeormError('HAGEO_ERR_NOT_RUNNING', `crm_mon failed (is Pacemaker running on this node?): ${mon.stderr.trim() || `exit ${mon.code}`}`, { exitCode: 2 });
  }
  const tool = await capture('corosync-cfgtool', ['-s']);
  return buildStatus(cfg, parseCrmMon(mon.stdout), tool.code === 0 ? tool.stdout : null);
}

export function formatStatus(s: HageoStatus): string {
  const out: string[] = [];
  out.push(`cluster ${s.cluster}: ${s.quorum ? 'quorate' : 'NO QUORUM'}, DC ${s.dc ?? 'none'}`);
  out.push(`nodes: ${s.nodes.map((n) => `${n.name} ${n.state}`).join(', ') || 'none'}`);
  if (s.links) {
    for (const l of s.links) out.push(`link ${l.link} (${l.source}): ${Object.entries(l.peers).map(([n, st]) => `${n} ${st}`).join(', ') || 'no peers'}`);
  } else {
    out.push('links: unknown (corosync-cfgtool failed)');
  }
  for (const g of s.gmds) {
    const parts = [`promoted on ${g.promoted.join(', ') || 'none'}`, `unpromoted on ${g.unpromoted.join(', ') || 'none'}`];
    if (g.failed.length) parts.push(`FAILED on ${g.failed.join(', ')}`);
    if (g.stopped) parts.push('stopped');
    out.push(`GMD ${g.name} (${g.clone}): ${parts.join('; ')}`);
  }
  return `${out.join('\n')}\n`;
}

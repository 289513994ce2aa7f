/**
 * Reads everything the metrics endpoint reports about the GMDs of one machine: finds their control
 * sockets in the run directory and asks each for its status, its GeoMessage statistics and (only
 * when the local map holds stale regions) the peers' maps, to tell a divergence. A GMD that does
 * not answer comes back as `{ up: false }` with the reason; probing never throws for one GMD.
 */
import { readdir } from 'node:fs/promises';
import { createConnection } from 'node:net';
import { join } from 'node:path';
import { callControl } from '../gmd/control.js';
import type { GmdStatus } from '../gmd/device/index.js';
import { netStatSocketPath } from '../tools/netstat.js';
import type { GeoMessageStats } from '../geomessage/stats.js';

export interface GmdProbe {
  gmd: string;
  up: boolean;
  error?: string;
  status?: GmdStatus;
  net?: GeoMessageStats;
  /** Per peer: true when both this machine's and the peer's map hold stale regions (data divergence);
   * null when the peer's map could not be read. Empty when the local map has no stale region. */
  divergence?: Record<string, boolean | null>;
}

const CONTROL_SUFFIX = '.sock';
const NETSTAT_SUFFIX = '.netstat.sock';

/** GMD names with a control socket in runDir (`<gmd>.sock`; `<gmd>.netstat.sock` is not one). */
export async function discoverGmds(runDir: string): Promise<string[]> {
  const entries = await readdir(runDir, { withFileTypes: true }).catch(() => []);
  return entries
    .filter((e) => e.isSocket() && e.name.endsWith(CONTROL_SUFFIX) && !e.name.endsWith(NETSTAT_SUFFIX))
    .map((e) => e.name.slice(0, -CONTROL_SUFFIX.length))
    .sort();
}

/** One JSON line from a GMD's netstat socket (it writes its statistics and closes). */
function readNetStats(path: string, timeoutMs: number): Promise<GeoMessageStats> {
  return new Promise((resolve, reject) => {
    const sock = createConnection(path);
    let buf = '';
    const timer = setTimeout(() => { sock.destroy(); reject(new Error(`no statistics from ${path} within ${timeoutMs} ms`)); }, timeoutMs);
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => { buf += d; });
    sock.on('error', (e) => { clearTimeout(timer); reject(e); });
    sock.on('end', () => {
      clearTimeout(timer);
      try { resolve(JSON.parse(buf) as GeoMessageStats); } catch (e) { reject(e as Error); }
    });
  });
}

const STALE = 0xf;
const hasStale = (cells: Buffer) => cells.includes(STALE);

export async function probeGmd(runDir: string, gmd: string, timeoutMs: number): Promise<GmdProbe> {
  const control = join(runDir, `${gmd}${CONTROL_SUFFIX}`);
  let status: GmdStatus;
  try {
    status = await callControl(control, 'status', {}, timeoutMs) as GmdStatus;
  } catch (e) {
    return { gmd, up: false, error: (e as Error).message };
  }
  const probe: GmdProbe = { gmd, up: true, status, divergence: {} };
  // The statistics socket is optional to the report: a GMD without it still has its status shown.
  probe.net = await readNetStats(netStatSocketPath(runDir, gmd), timeoutMs).catch(() => undefined);
  // Divergence costs a round trip to each peer, so it is asked only when it is possible at all.
  // A peer GeoMessage sees down cannot be asked (the question would wait for its timeout and make the
  // scrape miss its deadline): its divergence is unknown, not 0.
  const reachable = new Set((probe.net?.machines ?? []).filter((m) => m.state === 'up').map((m) => m.machine));
  if ((status.map?.stale ?? 0) > 0 && !status.peers.some((p) => p.active)) {
    for (const p of status.peers) probe.divergence![p.machine] = null;
    if (reachable.size === 0) return probe;
    try {
      const r = await callControl(control, 'cells', { peers: true }, timeoutMs) as { peerCells: Record<string, string | null> };
      for (const [peer, cells] of Object.entries(r.peerCells)) {
        if (!reachable.has(peer)) continue;
        probe.divergence![peer] = cells === null ? null : hasStale(Buffer.from(cells, 'base64'));
      }
    } catch {
      for (const p of status.peers) probe.divergence![p.machine] = null;
    }
  }
  return probe;
}

export async function probeAll(runDir: string, timeoutMs: number): Promise<GmdProbe[]> {
  const names = await discoverGmds(runDir);
  return Promise.all(names.map((n) => probeGmd(runDir, n, timeoutMs)));
}

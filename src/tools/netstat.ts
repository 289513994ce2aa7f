/**
 * `georm netstat` / `krpcstat`: the report formatter over GeoMessage statistics snapshots, and the
 * unix socket a daemon serves its snapshot on (one JSON line per connection) with the client that
 * finds and reads those sockets. A tool beside the transport: the transport only produces stats().
 */
import { createConnection, createServer, type Server } from 'node:net';
import { readFile, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { GeormError } from '../util/errors.js';
import { totalDrops, type GeoMessageStats, type MachineStats, type NetworkStats } from '../geomessage/stats.js';

/** Switches of `georm netstat` / `krpcstat` that shape the report. */
export interface NetStatSwitches {
  /** -s: one line per machine and network instead of the detailed report. */
  summary?: boolean;
  /** -m: only these peer machines (default all). */
  machines?: readonly string[];
  /** -n: only these networks (default all). */
  networks?: readonly string[];
  /** The previous snapshot: rates are per second over the interval between the two (else since start). */
  previous?: GeoMessageStats;
}

const kb = (bytes: number) => (bytes / 1024).toFixed(1);
const pad = (s: string | number, w: number) => String(s).padStart(w);
const padR = (s: string | number, w: number) => String(s).padEnd(w);

function rate(now: number, before: number, secs: number): string {
  return secs > 0 ? ((now - before) / secs).toFixed(2) : '0.00';
}

/**
 * Renders a krpcstat-like report: per machine the RPCs and KB out/in with rates, replies, failures and
 * fragmentation; per network packets and KB with rates, resends, timeouts, failures, duplicates,
 * other (pings/acks), refused packets and the smoothed RTT to each peer.
 */
export function formatNetStats(stats: GeoMessageStats, sw: NetStatSwitches = {}): string {
  const prev = sw.previous;
  const secs = prev ? (stats.time - prev.time) / 1000 : stats.uptimeMs / 1000;
  const machines = stats.machines.filter((m) => !sw.machines?.length || sw.machines.includes(m.machine));
  const networks = stats.networks.filter((n) => !sw.networks?.length || sw.networks.includes(n.network));
  const pm = (m: MachineStats) => prev?.machines.find((x) => x.machine === m.machine);
  const pn = (n: NetworkStats) => prev?.networks.find((x) => x.network === n.network);
  const out: string[] = [];
  out.push(`GeoMessage on ${stats.machine} (epoch ${stats.epoch}), ${prev ? `interval ${secs.toFixed(1)} s` : `up ${secs.toFixed(1)} s`}`);
  if (sw.summary) {
    out.push('');
    out.push(`${padR('machine', 14)}${padR('state', 8)}${padR('via', 10)}${pad('rpcs out', 10)}${pad('rpc/s', 10)}${pad('kb out', 12)}${pad('kb/s', 11)}${pad('rpcs in', 10)}${pad('kb in', 12)}${pad('fail', 6)}`);
    for (const m of machines) {
      const p = pm(m);
      out.push(`${padR(m.machine, 14)}${padR(m.state, 8)}${padR(m.network ?? '-', 10)}${pad(m.rpcsOut, 10)}${pad(rate(m.rpcsOut, p?.rpcsOut ?? 0, secs), 10)}` +
        `${pad(kb(m.bytesOut), 12)}${pad(rate(m.bytesOut / 1024, (p?.bytesOut ?? 0) / 1024, secs), 11)}${pad(m.rpcsIn, 10)}${pad(kb(m.bytesIn), 12)}${pad(m.failures, 6)}`);
    }
    out.push('');
    out.push(`${padR('network', 14)}${pad('snd', 10)}${pad('rcv', 10)}${pad('Okb', 12)}${pad('Ikb', 12)}${pad('resends', 9)}${pad('tmouts', 8)}${pad('fail', 6)}${pad('dups', 6)}${pad('other', 8)}${pad('refused', 8)}${pad('srtt ms', 9)}`);
    for (const n of networks) {
      const srtts = n.links.filter((l) => l.srttMs !== null).map((l) => l.srttMs!);
      out.push(`${padR(n.network, 14)}${pad(n.packetsOut, 10)}${pad(n.packetsIn, 10)}${pad(kb(n.bytesOut), 12)}${pad(kb(n.bytesIn), 12)}${pad(n.resends, 9)}` +
        `${pad(n.timeouts, 8)}${pad(n.failures, 6)}${pad(n.duplicates, 6)}${pad(n.other, 8)}${pad(totalDrops(n.dropped), 8)}${pad(srtts.length ? Math.min(...srtts).toFixed(3) : '-', 9)}`);
    }
    return out.join('\n') + '\n';
  }
  out.push('');
  out.push('Machines                           RPC statistics');
  for (const m of machines) {
    const p = pm(m);
    out.push(`${padR(m.machine, 14)} ${m.state}${m.epoch ? `, epoch ${m.epoch}` : ''}${m.network ? `, via ${m.network}` : ''}${m.restarts ? `, restarts ${m.restarts}` : ''}`);
    out.push(`    out: ${m.rpcsOut} rpcs (${rate(m.rpcsOut, p?.rpcsOut ?? 0, secs)}/s)  ${kb(m.bytesOut)} kb (${rate(m.bytesOut / 1024, (p?.bytesOut ?? 0) / 1024, secs)} kb/s)`);
    out.push(`    in:  ${m.rpcsIn} rpcs (${rate(m.rpcsIn, p?.rpcsIn ?? 0, secs)}/s)  ${kb(m.bytesIn)} kb (${rate(m.bytesIn / 1024, (p?.bytesIn ?? 0) / 1024, secs)} kb/s)`);
    const frag = m.rpcsOut ? (100 * m.fragmented / m.rpcsOut).toFixed(1) : '0.0';
    out.push(`    ${pad('replies', 9)}${pad('failures', 10)}${pad('rpcs', 10)}${pad('fragd', 8)}${pad('frags', 9)}${pad('%frag', 7)}`);
    out.push(`    ${pad(m.replies, 9)}${pad(m.failures, 10)}${pad(m.rpcsOut, 10)}${pad(m.fragmented, 8)}${pad(m.fragments, 9)}${pad(frag, 7)}`);
  }
  out.push('');
  out.push('Networks                           network statistics');
  for (const n of networks) {
    const p = pn(n);
    out.push(`${padR(n.network, 14)} ${n.local}, mtu ${n.mtu}`);
    out.push(`    snd ${n.packetsOut} (${rate(n.packetsOut, p?.packetsOut ?? 0, secs)}/s)  rcv ${n.packetsIn} (${rate(n.packetsIn, p?.packetsIn ?? 0, secs)}/s)` +
      `  Okb ${kb(n.bytesOut)} (${rate(n.bytesOut / 1024, (p?.bytesOut ?? 0) / 1024, secs)}/s)  Ikb ${kb(n.bytesIn)} (${rate(n.bytesIn / 1024, (p?.bytesIn ?? 0) / 1024, secs)}/s)`);
    out.push(`    ${pad('resends', 9)}${pad('timeouts', 10)}${pad('failures', 10)}${pad('dups', 7)}${pad('other', 9)}${pad('refused', 9)}`);
    out.push(`    ${pad(n.resends, 9)}${pad(n.timeouts, 10)}${pad(n.failures, 10)}${pad(n.duplicates, 7)}${pad(n.other, 9)}${pad(totalDrops(n.dropped), 9)}`);
    const d = n.dropped;
    if (totalDrops(d)) out.push(`    refused: auth ${d.auth}, short ${d.short}, malformed ${d.malformed}, version ${d.version}, replay ${d.replay}, stale ${d.stale}, unknown peer ${d.unknownPeer}`);
    for (const l of n.links) {
      out.push(`    to ${padR(l.peer, 12)} ${l.up ? 'up  ' : 'down'}  srtt ${l.srttMs === null ? '-' : l.srttMs.toFixed(3)} ms  rttvar ${l.rttvarMs === null ? '-' : l.rttvarMs.toFixed(3)} ms  rto ${l.rtoMs.toFixed(1)} ms`);
    }
  }
  out.push('');
  out.push('snd/rcv = packets sent/received, Okb/Ikb = KB out/in, resends = packets sent again, timeouts = retransmit');
  out.push('timer expiries, failures = packets given up on this network, dups = duplicates received, other = pings/pongs/acks,');
  out.push('refused = packets dropped unparsed (unauthenticated, malformed, replayed, stale, unknown sender)');
  return out.join('\n') + '\n';
}

/** Name of the stats socket a process serves in a run directory. */
export function netStatSocketPath(runDir: string, name: string): string {
  return join(runDir, `${name}.netstat.sock`);
}

/**
 * The hook a long-running process (a GMD) uses so `georm netstat` can read its statistics: a unix
 * socket that answers every connection with one JSON line of `stats()` and closes.
 */
export async function serveNetStats(stats: () => GeoMessageStats, socketPath: string): Promise<Server> {
  await rm(socketPath, { force: true });
  const server = createServer((c) => {
    c.on('error', () => { /* client went away */ });
    c.end(JSON.stringify(stats()) + '\n');
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(socketPath, () => { server.off('error', reject); resolve(); });
  });
  server.unref();
  return server;
}

/** Reads one snapshot from a stats socket (or a JSON snapshot file when the path is not a socket). */
export async function readNetStats(path: string, timeoutMs = 3000): Promise<GeoMessageStats> {
  if (!path.endsWith('.sock')) {
    try {
      return JSON.parse(await readFile(path, 'utf8')) as GeoMessageStats;
    } catch (err) {
      throw new GeormError('GEOMSG_ERR_STATS_UNAVAILABLE', `cannot read statistics from ${path}: ${(err as Error).message}`, { exitCode: 2, cause: err });
    }
  }
  return new Promise((resolve, reject) => {
    let text = '';
    const c = createConnection(path);
    const timer = setTimeout(() => { c.destroy(); fail(new Error('timed out')); }, timeoutMs);
    const fail = (err: Error) => {
      clearTimeout(timer);
      reject(new GeormError('GEOMSG_ERR_STATS_UNAVAILABLE', `cannot read statistics from ${path}: ${err.message}`, { exitCode: 2, cause: err }));
    };
    c.setEncoding('utf8');
    c.on('data', (d: string) => { text += d; });
    c.on('error', fail);
    c.on('end', () => {
      clearTimeout(timer);
      try { resolve(JSON.parse(text) as GeoMessageStats); } catch (err) { fail(err as Error); }
    });
  });
}

/** Every stats socket in a run directory (one per GeoMessage process). */
export async function findNetStatSockets(runDir: string): Promise<string[]> {
  try {
    return (await readdir(runDir)).filter((f) => f.endsWith('.netstat.sock')).sort().map((f) => join(runDir, f));
  } catch {
    return [];
  }
}

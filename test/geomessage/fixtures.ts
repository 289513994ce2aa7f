import { createSocket } from 'node:dgram';
import { openGeoMessage, type GeoMessage, type GeoMessageOptions, type NetworkEndpoint } from '../../src/geomessage/index.js';
import { startWanEmulator, type WanEmulator } from '../../src/geomessage/wanem.js';

export const KEY = Buffer.from('0123456789abcdef0123456789abcdef');

/** Free UDP ports on an address (bound together, then released: a tiny race we accept in tests). */
export async function freePorts(n: number, address = '127.0.0.1'): Promise<number[]> {
  const socks = await Promise.all(Array.from({ length: n }, () => new Promise<ReturnType<typeof createSocket>>((resolve, reject) => {
    const s = createSocket('udp4');
    s.once('error', reject);
    s.bind(0, address, () => resolve(s));
  })));
  const ports = socks.map((s) => s.address().port);
  await Promise.all(socks.map((s) => new Promise<void>((r) => s.close(() => r()))));
  return ports;
}

export interface PairOptions extends Partial<Omit<GeoMessageOptions, 'machine' | 'endpoints' | 'peers'>> {
  pftMs?: number;
  mtu?: number;
}

/**
 * Two GeoMessage machines `a` and `b`. `aSeesB[i]` is where a sends to reach b on network i (the
 * emulator's relay port, or b's own port), likewise `bSeesA`.
 */
export async function openPair(aEps: NetworkEndpoint[], bEps: NetworkEndpoint[], aSeesB: NetworkEndpoint[], bSeesA: NetworkEndpoint[],
  o: PairOptions = {}): Promise<{ a: GeoMessage; b: GeoMessage }> {
  const { pftMs = 0, ...rest } = o;
  const base = { key: KEY, keepaliveMs: 200, ...rest };
  const a = await openGeoMessage({ ...base, machine: 'a', endpoints: aEps, peers: [{ machine: 'b', endpoints: aSeesB, promoteFailureTimeoutMs: pftMs }] });
  const b = await openGeoMessage({ ...base, machine: 'b', endpoints: bEps, peers: [{ machine: 'a', endpoints: bSeesA, promoteFailureTimeoutMs: pftMs }] });
  return { a, b };
}

/** Two machines on loopback, one network, talking directly. */
export async function loopbackPair(o: PairOptions = {}): Promise<{ a: GeoMessage; b: GeoMessage; ports: number[] }> {
  const [pa, pb] = await freePorts(2);
  const ep = (port: number): NetworkEndpoint[] => [{ network: 'n1', address: '127.0.0.1', port: port!, ...(o.mtu ? { mtu: o.mtu } : {}) }];
  const { a, b } = await openPair(ep(pa!), ep(pb!), ep(pb!), ep(pa!), o);
  return { a, b, ports: [pa!, pb!] };
}

/**
 * a ⇄ emulator ⇄ b on loopback. Each network i gets its own emulator; a sends to the emulator's
 * side-a port, b to its side-b port.
 */
export async function emulatedPair(nets: number, imp: Parameters<typeof startWanEmulator>[0]['a2b'], extra: { pftMs?: number; mtu?: number; keepaliveMs?: number } = {}) {
  const ports = await freePorts(2 * nets);
  const ems: WanEmulator[] = [];
  const aEps: NetworkEndpoint[] = [], bEps: NetworkEndpoint[] = [], aSeesB: NetworkEndpoint[] = [], bSeesA: NetworkEndpoint[] = [];
  for (let i = 0; i < nets; i++) {
    const network = `n${i + 1}`;
    const pa = ports[2 * i]!, pb = ports[2 * i + 1]!;
    const em = await startWanEmulator({
      a: { listen: { address: '127.0.0.1', port: 0 }, target: { address: '127.0.0.1', port: pa } },
      b: { listen: { address: '127.0.0.1', port: 0 }, target: { address: '127.0.0.1', port: pb } },
      a2b: imp, b2a: imp, seed: 1234 + i,
    });
    ems.push(em);
    const rp = em.ports();
    const mtu = extra.mtu ? { mtu: extra.mtu } : {};
    aEps.push({ network, address: '127.0.0.1', port: pa, ...mtu });
    bEps.push({ network, address: '127.0.0.1', port: pb, ...mtu });
    aSeesB.push({ network, address: '127.0.0.1', port: rp.a, ...mtu });
    bSeesA.push({ network, address: '127.0.0.1', port: rp.b, ...mtu });
  }
  const { a, b } = await openPair(aEps, bEps, aSeesB, bSeesA, { keepaliveMs: extra.keepaliveMs ?? 100, ...(extra.pftMs ? { pftMs: extra.pftMs } : {}) });
  return { a, b, ems };
}

/** Deterministic payload for message i (so the receiver can check it is intact). */
export function payloadFor(i: number, size: number): Buffer {
  const b = Buffer.allocUnsafe(size);
  let x = (i * 2654435761) >>> 0;
  for (let k = 0; k < size; k++) { x = (x * 1103515245 + 12345) >>> 0; b[k] = x >>> 24; }
  if (size >= 4) b.writeUInt32BE(i, 0);
  return b;
}

export function waitFor(cond: () => boolean, timeoutMs: number, what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const t0 = Date.now();
    const iv = setInterval(() => {
      if (cond()) { clearInterval(iv); resolve(); } else if (Date.now() - t0 > timeoutMs) { clearInterval(iv); reject(new Error(`timeout waiting for ${what}`)); }
    }, 10);
  });
}

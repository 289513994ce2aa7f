/**
 * The GeoMessage transport: one UDP socket per network, one session per peer machine. This file
 * opens and closes it, implements the API (api.ts) and runs the periodic tick (keepalives, network
 * and peer timeouts); each mechanism lives in its own file:
 *   session.ts   per-peer send and receive state      sender.ts      messages → packets, RTO timer
 *   loss.ts      acks, fast retransmit, timeouts       congestion.ts  the congestion window
 *   path.ts      which network carries a peer          liveness.ts    peer/network up, down, restart
 *   receiver.ts  packet validation, acks to send       reassembly.ts  fragments, duplicates, ordering
 *   rpc.ts       handlers and replies                  stats-report.ts the statistics snapshot
 * See packet.ts for the wire format and README (GeoMessage) for the reliability rules.
 */
import { EventEmitter } from 'node:events';
import type { GeoMessage, GeoMessageOptions, Handler, HandlerOptions, Payload, SendOptions } from './api.js';
import { nowMs, TransportContext } from './context.js';
import { GeoMessageError } from './errors.js';
import { linkDown, peerDown } from './liveness.js';
import { onRto } from './loss.js';
import { fragmentPayloadSize, machineId } from './packet.js';
import { rechoose, silentTooLong } from './path.js';
import { expireReassemblies } from './reassembly.js';
import { onPacket, pumpDeferred } from './receiver.js';
import { RttEstimator } from './rtt.js';
import { failAll, pingAll, pump, submit } from './sender.js';
import { newLink, newNetCounters, PeerSession, SVC_TOMBSTONE, type Net } from './session.js';
import type { GeoMessageStats } from './stats.js';
import { statsSnapshot } from './stats-report.js';
import { openWire, type Wire } from './wire.js';

export type {
  GeoMessage, GeoMessageOptions, GeoMessageEvents, NetworkEndpoint, PeerSpec,
  Payload, IncomingMessage, Handler, HandlerOptions, PayloadMemory, SendOptions,
} from './api.js';

/** RTO before a link's first RTT sample (ms). */
const INITIAL_RTO_MS = 200;

export class GeoMessageTransport extends EventEmitter implements GeoMessage {
  readonly epoch: number;
  private readonly ctx: TransportContext;
  private tick: NodeJS.Timeout | null = null;
  private readonly started = nowMs();

  constructor(private readonly opts: GeoMessageOptions) {
    super();
    if (!opts.endpoints.length) throw new GeoMessageError('GEOMSG_ERR_CONFIG', 'GeoMessage needs at least one local endpoint');
    if (opts.key.length < 16) throw new GeoMessageError('GEOMSG_ERR_KEY', 'cluster key shorter than 16 bytes');
    this.ctx = new TransportContext(opts, this, (peer) => onRto(this.ctx, peer));
    this.epoch = this.ctx.epoch;
  }

  /** Binds the sockets, greets every peer, starts keepalives. On failure nothing stays bound. */
  async open(): Promise<void> {
    try {
      await this.openInner();
    } catch (err) {
      for (const n of this.ctx.nets) void n.wire.close();
      this.ctx.nets.length = 0;
      throw err;
    }
  }

  private async openInner(): Promise<void> {
    const o = this.opts;
    const ctx = this.ctx;
    const names = new Set<string>();
    for (const ep of o.endpoints) {
      if (names.has(ep.network)) throw new GeoMessageError('GEOMSG_ERR_CONFIG', `network ${ep.network} listed twice`);
      names.add(ep.network);
    }
    const ids = new Map<number, string>([[ctx.myId, o.machine]]);
    for (const p of o.peers) {
      const id = machineId(p.machine);
      if (ids.has(id)) throw new GeoMessageError('GEOMSG_ERR_CONFIG', `machine names ${p.machine} and ${ids.get(id)} collide (same wire id); rename one`);
      ids.set(id, p.machine);
    }
    for (const [i, ep] of o.endpoints.entries()) {
      const mtu = ep.mtu ?? 1500;
      if (fragmentPayloadSize(mtu) < 64) throw new GeoMessageError('GEOMSG_ERR_CONFIG', `network ${ep.network}: MTU ${mtu} too small`);
      const counters = newNetCounters();
      let wire: Wire;
      try {
        wire = await openWire(o.io ?? 'auto', {
          address: ep.address, port: ep.port, bufferBytes: o.socketBufferBytes ?? 8 << 20, key: ctx.key,
          onPacket: (buf, off, len, status, now) => {
            try {
              onPacket(ctx, net, buf, off, len, status, now);
            } catch (err) {
              // A bug must not take the process (and its GMD) down on one odd packet: count and log it.
              counters.dropped.malformed++;
              ctx.log.error({ err, network: ep.network }, 'packet handling failed');
            }
          },
          onBatchEnd: () => {
            try {
              pumpDeferred(ctx);
            } catch (err) {
              ctx.log.error({ err, network: ep.network }, 'sending after a receive batch failed');
            }
          },
          onSendFailure: (count, err) => { counters.failures += count; ctx.log.debug({ err, network: ep.network, count }, 'send failed'); },
          onSendWait: () => { counters.sendWaits++; },
        });
      } catch (err) {
        throw new GeoMessageError('GEOMSG_ERR_CONFIG', `cannot bind ${ep.address}:${ep.port} for network ${ep.network}: ${(err as Error).message}`, { cause: err });
      }
      const net: Net = { index: i, spec: ep, mtu, wire, counters };
      ctx.nets.push(net);
    }
    const now = nowMs();
    const limits = { windowPackets: ctx.windowPackets, windowBytes: ctx.windowBytes, queueTargetMs: ctx.queueTarget };
    for (const ps of o.peers) {
      const links = ctx.nets.map((net) => {
        const ep = ps.endpoints.find((e) => e.network === net.spec.network);
        if (!ep) return null;
        const l = newLink(net, ep.address, ep.port, net.wire.out(ep.address, ep.port), new RttEstimator(ctx.rtoMin, ctx.rtoMax, INITIAL_RTO_MS));
        if (ep.mtu && ep.mtu < net.mtu) net.mtu = Math.min(net.mtu, ep.mtu);
        return l;
      });
      if (!links.some((l) => l)) throw new GeoMessageError('GEOMSG_ERR_CONFIG', `peer ${ps.machine} shares no network with ${o.machine}`);
      const peer = new PeerSession(ps, links, now, limits, ctx.log);
      if (o.firstPacketNumber !== undefined) {
        if (!Number.isInteger(o.firstPacketNumber) || o.firstPacketNumber < 1 || o.firstPacketNumber >= 2 ** 47) {
          throw new GeoMessageError('GEOMSG_ERR_CONFIG', `firstPacketNumber must be an integer from 1 to 2^47, not ${o.firstPacketNumber}`);
        }
        peer.send.nextPseq = o.firstPacketNumber;
      }
      for (const l of links) if (l) l.out.onDrain = () => pump(ctx, peer);
      ctx.peers.set(ps.machine, peer);
      ctx.peersById.set(peer.id, peer);
      pingAll(ctx, peer);
    }
    this.tick = setInterval(() => this.onTick(), Math.max(10, Math.min(ctx.keepaliveMs, 250)));
    this.tick.unref();
  }

  localPorts(): number[] { return this.ctx.nets.map((n) => n.wire.port); }

  handle(service: number, handler: Handler, opts?: HandlerOptions): void {
    if (!Number.isInteger(service) || service < 0 || service >= SVC_TOMBSTONE) {
      throw new GeoMessageError('GEOMSG_ERR_CONFIG', `service must be an integer in 0..${SVC_TOMBSTONE - 1}`);
    }
    this.ctx.handlers.set(service, handler);
    if (opts?.payloads) this.ctx.payloadMem.set(service, opts.payloads);
    else this.ctx.payloadMem.delete(service);
  }

  peerState(peer: string): 'up' | 'down' | 'unknown' {
    return this.ctx.peers.get(peer)?.state ?? 'unknown';
  }

  request(peer: string, service: number, payload: Payload, opts?: SendOptions): Promise<Buffer> {
    return submit(this.ctx, peer, service, payload, 'request', opts) as Promise<Buffer>;
  }

  send(peer: string, service: number, payload: Payload, opts?: SendOptions): Promise<void> {
    return submit(this.ctx, peer, service, payload, 'send', opts).then(() => undefined);
  }

  declareDown(peer: string): void {
    const p = this.ctx.peers.get(peer);
    if (!p) throw new GeoMessageError('GEOMSG_ERR_UNKNOWN_PEER', `unknown peer ${peer}`);
    peerDown(this.ctx, p, 'declared');
  }

  async close(): Promise<void> {
    const ctx = this.ctx;
    if (ctx.closed) return;
    ctx.closed = true;
    if (this.tick) clearInterval(this.tick);
    for (const p of ctx.peers.values()) {
      failAll(ctx, p, 'GEOMSG_ERR_CLOSED', 'GeoMessage closed');
      if (p.send.rtoTimer) clearTimeout(p.send.rtoTimer);
    }
    await Promise.all(ctx.nets.map((n) => n.wire.close()));
  }

  /** Keepalives, the keepalive verdict on networks, the Promote Failure Timeout, path re-choice. */
  private onTick(): void {
    const ctx = this.ctx;
    if (ctx.closed) return;
    const now = nowMs();
    for (const peer of ctx.peers.values()) {
      if (now - peer.lastPing >= ctx.keepaliveMs) {
        peer.lastPing = now;
        pingAll(ctx, peer);
      }
      for (const l of peer.links) {
        if (l && silentTooLong(l, now, ctx.networkTimeoutMs)) linkDown(ctx, peer, l);
      }
      const pft = peer.spec.promoteFailureTimeoutMs;
      if (pft > 0 && peer.state !== 'down' && now - peer.lastHeard > pft) peerDown(ctx, peer, 'promote-failure-timeout');
      if (peer.chosen >= 0) rechoose(ctx, peer);
      expireReassemblies(peer, now);
    }
  }

  stats(): GeoMessageStats {
    return statsSnapshot(this.ctx, this.started);
  }
}

/** Opens GeoMessage: binds one socket per local endpoint and starts greeting the peers. */
export async function openGeoMessage(opts: GeoMessageOptions): Promise<GeoMessage> {
  const gm = new GeoMessageTransport(opts);
  await gm.open();
  return gm;
}

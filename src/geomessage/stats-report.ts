/**
 * The statistics snapshot (GeoMessageStats, stats.ts) taken from the live sessions and networks:
 * per peer machine its state, chosen network and message counters; per network its packet counters,
 * the wire's GSO state and each peer's link (up, SRTT, RTTVAR, RTO).
 */
import { nowMs, type TransportContext } from './context.js';
import type { GeoMessageStats, MachineStats, NetworkStats } from './stats.js';

export function statsSnapshot(ctx: TransportContext, startedAt: number): GeoMessageStats {
  const machines: MachineStats[] = [...ctx.peers.values()].map((p) => ({
    machine: p.name, state: p.state, epoch: p.epoch,
    network: p.chosen >= 0 ? p.links[p.chosen]!.net.spec.network : null,
    ...p.counters,
  }));
  const networks: NetworkStats[] = ctx.nets.map((n) => ({
    network: n.spec.network,
    local: `${n.spec.address}:${n.wire.port}`,
    io: n.wire.describe(),
    mtu: n.mtu,
    ...n.counters,
    ...n.wire.gsoStats(),
    dropped: { ...n.counters.dropped },
    links: [...ctx.peers.values()].flatMap((p) => {
      const l = p.links[n.index];
      return l ? [{ peer: p.name, up: l.up, srttMs: l.rtt.samples ? l.rtt.srtt : null, rttvarMs: l.rtt.samples ? l.rtt.rttvar : null, rtoMs: l.rtt.rto }] : [];
    }),
  }));
  return { machine: ctx.machine, epoch: ctx.epoch, time: Date.now(), uptimeMs: nowMs() - startedAt, machines, networks };
}

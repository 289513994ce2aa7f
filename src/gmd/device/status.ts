/** What `georm status` shows of one GMD: a snapshot of its state, map, peers, resync and statistics. */

import type { CleanGate } from '../clean-gate.js';
import type { DeviceContext } from './context.js';
import type { PeerMembership } from './membership.js';
import { EVENTS_SHOWN } from './timeouts.js';
import type { GmdStatus } from './types.js';

export function deviceStatus(ctx: DeviceContext, membership: PeerMembership, gate: CleanGate): GmdStatus {
  const res = ctx.res;
  const counts = res?.map.counts();
  return {
    name: ctx.name, minor: ctx.minor, machine: ctx.machine, state: ctx.state,
    role: res?.attrs.role ?? null, mode: res?.attrs.mode ?? null, size: ctx.devSize,
    peers: ctx.peers.map((p) => ({ machine: p, link: ctx.net.peerState(p), active: ctx.activePeer === p, downGiven: ctx.downGiven.has(p) })),
    map: counts && res ? { ...counts, crashed: res.map.crashed } : null,
    resync: membership.resyncProgress(),
    stats: { ...ctx.stats, unflushedRegions: gate.waiting }, attrs: res ? { ...res.attrs } : null, events: ctx.recentEvents(EVENTS_SHOWN),
  };
}

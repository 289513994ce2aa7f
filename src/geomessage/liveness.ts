/**
 * Liveness: a peer or one of its networks going up or down, and a peer restarting (a new epoch).
 * Each change is logged and emitted as an event (GeoMessageEvents); a network going down moves its
 * traffic to the next choice, a peer going down or restarting fails its messages.
 */
import type { TransportContext } from './context.js';
import { failAll, pump } from './sender.js';
import { rechoose, rerouteFrom } from './path.js';
import type { Link, PeerSession } from './session.js';

export function peerUp(ctx: TransportContext, peer: PeerSession): void {
  if (peer.state === 'up') return;
  peer.state = 'up';
  ctx.log.info({ peer: peer.name, epoch: peer.epoch }, 'peer up');
  ctx.events.emit('peer-up', { peer: peer.name, epoch: peer.epoch });
  pump(ctx, peer);
}

export function peerDown(ctx: TransportContext, peer: PeerSession, reason: string): void {
  if (peer.state === 'down') return;
  peer.state = 'down';
  ctx.log.warn({ peer: peer.name, reason }, 'peer down');
  failAll(ctx, peer, 'GEOMSG_ERR_PEER_DOWN', `peer ${peer.name} is down (${reason})`);
  ctx.events.emit('peer-down', { peer: peer.name, reason });
}

/** New incarnation of the peer: everything of the old session is failed and forgotten. */
export function resetSession(ctx: TransportContext, peer: PeerSession, newEpoch: number): void {
  const old = peer.epoch;
  failAll(ctx, peer, 'GEOMSG_ERR_PEER_RESTART', `peer ${peer.name} restarted (epoch ${old} → ${newEpoch})`);
  peer.send.reset();
  peer.window.restart();
  peer.recv.reset();
  peer.epoch = newEpoch;
  peer.counters.restarts++;
  ctx.log.warn({ peer: peer.name, oldEpoch: old, newEpoch }, 'peer restarted');
  ctx.events.emit('peer-restart', { peer: peer.name, oldEpoch: old, newEpoch });
}

export function linkDown(ctx: TransportContext, peer: PeerSession, link: Link): void {
  if (!link.up) return;
  link.up = false;
  ctx.log.info({ peer: peer.name, network: link.net.spec.network }, 'network down');
  ctx.events.emit('network-down', { peer: peer.name, network: link.net.spec.network });
  const idx = peer.links.indexOf(link);
  if (peer.chosen === idx) {
    peer.chosen = -1;
    rechoose(ctx, peer);
  }
  // Whatever is still in flight on the failed network is resent on the chosen one now.
  if (peer.chosen !== idx) rerouteFrom(peer, idx);
  pump(ctx, peer);
}

export function linkUp(ctx: TransportContext, peer: PeerSession, link: Link): void {
  if (link.up) return;
  link.up = true;
  link.consecutiveTimeouts = 0;
  ctx.log.info({ peer: peer.name, network: link.net.spec.network }, 'network up');
  ctx.events.emit('network-up', { peer: peer.name, network: link.net.spec.network });
  rechoose(ctx, peer);
  pump(ctx, peer);
}

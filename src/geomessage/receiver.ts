/**
 * The receiver: every packet the wire hands over is validated in order — tag (unless the wire
 * checked it), destination, known peer and network, epochs (a stale incarnation is dropped, a newer
 * one resets the session), replay window — then counted as heard, its piggybacked acks applied, and
 * handled by type: data (acked once per I/O batch, then reassembled), ping (answered with a pong),
 * pong (an RTT sample that brings the network up). Pumping is deferred to the end of a batch on the
 * batching wire.
 */
import type { TransportContext } from './context.js';
import { linkUp, peerUp, resetSession } from './liveness.js';
import { onAcks } from './loss.js';
import { checkTag, viewPacket, T_ACK, T_DATA, T_PING, T_PONG, type DropReason } from './packet.js';
import { chosenLink, rechoose } from './path.js';
import { onData } from './reassembly.js';
import { ping, probe, pump, sendControl } from './sender.js';
import type { Net, PeerSession } from './session.js';
import type { ReceivedStatus } from './wire.js';

function drop(net: Net, why: DropReason | 'replay' | 'stale' | 'unknownPeer'): void {
  net.counters.dropped[why]++;
}

/** `now`: when the packet's receive batch was read (nowMs(); one clock read per batch). */
export function onPacket(ctx: TransportContext, net: Net, buf: Buffer, off: number, len: number, status: ReceivedStatus, now: number): void {
  if (ctx.closed) return;
  const c = net.counters;
  c.packetsIn++;
  c.bytesIn += len;
  const p = ctx.rx;
  const why = status === 'checked' ? viewPacket(buf, off, len, p)
    : status === 'unchecked' ? checkTag(ctx.key, off === 0 && len === buf.length ? buf : buf.subarray(off, off + len)) ?? viewPacket(buf, off, len, p)
      : status;
  if (why) return drop(net, why);
  if (p.dstMachine !== ctx.myId) return drop(net, 'malformed');
  const peer = ctx.peersById.get(p.srcMachine);
  if (!peer) return drop(net, 'unknownPeer');
  const link = peer.links[net.index];
  if (!link) return drop(net, 'unknownPeer');
  // Epochs: a lower source epoch is a stale packet of a previous incarnation; a higher one is a restart.
  if (peer.epoch !== p.srcEpoch) {
    if (peer.epoch === 0) {
      peer.epoch = p.srcEpoch;
    } else if (p.srcEpoch < peer.epoch) {
      return drop(net, 'stale');
    } else {
      resetSession(ctx, peer, p.srcEpoch);
    }
  }
  if (p.type !== T_PING && p.dstEpoch !== ctx.epoch) {
    // Meant for our previous incarnation: tell the peer who we are now (rate-limited).
    probe(ctx, peer);
    return drop(net, 'stale');
  }
  const recv = peer.recv;
  if (!recv.replay.check(p.pseq)) { c.duplicates++; return drop(net, 'replay'); }
  recv.ranges.add(p.pseq);
  peer.lastHeard = now;
  link.lastHeard = now;
  if (peer.state !== 'up') peerUp(ctx, peer);
  if (p.hasAcks) onAcks(ctx, peer, p.acks, p.ackCount, now);
  switch (p.type) {
    case T_DATA:
      recv.ackPending = true;
      recv.ackLink = net.index;
      scheduleAck(ctx, peer);
      onData(ctx, peer, net, p, now);
      break;
    case T_PING: {
      c.other++;
      sendControl(ctx, peer, link, T_PONG, Buffer.from(p.buf.subarray(p.payloadOff, p.payloadOff + p.fragLen)), false);
      // Not yet proven both ways on this network: probe now rather than at the next keepalive.
      if (!link.up && now - link.lastProbe > 20) { link.lastProbe = now; ping(ctx, peer, link); }
      break;
    }
    case T_PONG: {
      c.other++;
      if (p.fragLen === 8) link.rtt.sample(now - p.buf.readDoubleBE(p.payloadOff));
      link.consecutiveTimeouts = 0;
      if (!link.up) linkUp(ctx, peer, link);
      else if (peer.chosen < 0) rechoose(ctx, peer);
      break;
    }
    default:
      c.other++;
  }
  // A batching wire calls onBatchEnd after the batch: one pump per peer there, not one per packet.
  if (net.wire.kind !== 'native') pump(ctx, peer);
  else if (!peer.pumpDeferred) { peer.pumpDeferred = true; ctx.deferred.push(peer); }
}

/** Pumps the peers whose packets arrived in the receive batch just handled. */
export function pumpDeferred(ctx: TransportContext): void {
  const peers = ctx.deferred;
  if (peers.length === 0) return;
  ctx.deferred = [];
  for (const peer of peers) peer.pumpDeferred = false; // first: a throwing pump must not strand the others
  for (const peer of peers) pump(ctx, peer);
}

function scheduleAck(ctx: TransportContext, peer: PeerSession): void {
  const recv = peer.recv;
  if (recv.ackScheduled) return;
  recv.ackScheduled = true;
  // One ack per I/O batch: packets read in the same loop turn share it, and a reply produced in this
  // turn carries it piggyback instead.
  setImmediate(() => {
    recv.ackScheduled = false;
    if (!recv.ackPending || ctx.closed) return;
    const link = peer.links[recv.ackLink] ?? chosenLink(ctx, peer);
    if (link) sendControl(ctx, peer, link, T_ACK, null, true);
  });
}

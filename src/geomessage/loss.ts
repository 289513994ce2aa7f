/**
 * Acknowledgements and loss detection for the packets we sent. A packet in flight leaves the queue
 * when an ack block covers it (its message completes once every fragment is acknowledged), when a
 * packet REORDER_THRESHOLD numbers later is acknowledged (fast retransmit), or when the
 * retransmission timer finds it older than its link's RTO. Acks also feed the RTT estimator, the
 * path's minimum RTT and the congestion window; timeouts back the RTO off and can fail a network.
 */
import { nowMs, type TransportContext } from './context.js';
import { linkDown, linkUp } from './liveness.js';
import { widenPseq } from './packet.js';
import { failingOnTimeouts, nextPath, otherUpLink } from './path.js';
import { armRto, pump } from './sender.js';
import { isAcked, type Inflight, type Link, type PeerSession } from './session.js';

/** Reordering tolerated before a packet counts as lost without waiting for its timer. */
const REORDER_THRESHOLD = 5;

/** Retransmission timer: every packet older than its link's RTO is lost. */
export function onRto(ctx: TransportContext, peer: PeerSession): void {
  if (ctx.closed) return;
  const now = nowMs();
  const hitLinks = new Set<Link>();
  const s = peer.send;
  const q = s.inflight;
  for (let pseq = q.low; pseq < q.high; pseq++) {
    const f = q.get(pseq);
    if (!f) continue;
    const link = peer.links[f.link]!;
    if (f.sentAt + link.rtt.rto > now) break;
    if (f.msg.done || isAcked(f.msg, f.frag)) { q.delete(pseq); continue; }
    // Nothing heard on the link for a whole RTO: a stall (the peer busy, a pause, a cut) rather than
    // many separate losses. Probe with the oldest packet only; the rest stay in flight and are
    // resent by the fast-retransmit rule once acks flow again, or moved if the network fails.
    const stalled = now - link.lastHeard > link.rtt.rto;
    if (stalled && hitLinks.has(link)) continue;
    q.delete(pseq);
    link.net.counters.timeouts++;
    peer.window.onLost();
    hitLinks.add(link);
    s.resendQueue.push(f);
  }
  let mostTimeouts = 0;
  for (const link of hitLinks) {
    link.consecutiveTimeouts++;
    if (link.consecutiveTimeouts > mostTimeouts) mostTimeouts = link.consecutiveTimeouts;
    // A link that keeps timing out and has not been heard from for longer than its (un-backed-off)
    // RTO is failing: move traffic now instead of waiting for the keepalive verdict.
    if (failingOnTimeouts(link, now, ctx.networkTimeoutMs) && otherUpLink(peer, link)) linkDown(ctx, peer, link);
    link.rtt.onTimeout();
  }
  if (hitLinks.size) {
    peer.window.onRtoExpired(mostTimeouts);
    ctx.log.debug({ peer: peer.name, links: [...hitLinks].map((l) => [l.net.spec.network, l.consecutiveTimeouts, Math.round(now - l.lastHeard), l.rtt.rto]), retx: s.resendQueue.length, inflight: q.size }, 'rto');
  }
  // No network known up: probe the next one on every timeout.
  const cur = peer.chosen >= 0 ? peer.links[peer.chosen] : null;
  if (hitLinks.size && cur && !cur.up && !peer.links.some((l) => l && l.up)) {
    const next = nextPath(peer.links, peer.chosen);
    if (next >= 0) peer.chosen = next;
  }
  pump(ctx, peer);
  armRto(ctx, peer);
}

/** acks[0, count): the flat ranges of a received ack block (widened here, in place). */
export function onAcks(ctx: TransportContext, peer: PeerSession, acks: number[], count: number, now: number): void {
  const s = peer.send;
  if (s.inflight.size === 0 || count === 0) return;
  // The block carries low 32 bits: widen them against our next number, then check the order.
  const next = s.nextPseq;
  for (let i = 0; i < count; i++) acks[i] = widenPseq(acks[i]!, next);
  for (let i = 0; i < count; i += 2) if (acks[i + 1]! > acks[i]!) return;
  let newest: Inflight | null = null;
  let newestPseq = 0;
  // Merge the in-flight packets (ascending) with the ranges (descending, walked from the lowest):
  // only packets actually in flight are looked at, never the already-acknowledged span of a range.
  const maxHi = acks[0]!;
  let ri = count - 2;
  const q = s.inflight;
  for (let pseq = q.low; pseq < q.high && pseq <= maxHi; pseq++) {
    const f = q.get(pseq);
    if (!f) continue;
    while (ri >= 0 && acks[ri]! < pseq) ri -= 2;
    if (ri < 0) break;
    if (pseq < acks[ri + 1]!) continue; // in a hole below range ri
    q.delete(pseq);
    if (pseq > newestPseq) { newestPseq = pseq; newest = f; }
    fragAcked(peer, f);
  }
  if (!newest) return;
  const link = peer.links[newest.link]!;
  const sample = now - newest.sentAt;
  link.rtt.sample(sample);
  link.consecutiveTimeouts = 0;
  if (!link.up) linkUp(ctx, peer, link); // an acknowledged packet proves the round trip
  if (newestPseq > s.largestAcked) s.largestAcked = newestPseq;
  link.minRtt.update(sample, now);
  peer.window.onAck(sample, link.minRtt.ms, link.rtt.srtt, now, q.size);
  // Fast retransmit: packets far enough below the newest acknowledged one are lost.
  const limit = s.largestAcked - REORDER_THRESHOLD;
  for (let pseq = q.low; pseq < q.high && pseq <= limit; pseq++) {
    const f = q.get(pseq);
    if (!f) continue;
    q.delete(pseq);
    peer.window.onLost();
    if (f.msg.done || isAcked(f.msg, f.frag)) continue;
    s.resendQueue.push(f);
  }
}

/** One fragment acknowledged; a one-way message or reply completes with its last fragment. */
function fragAcked(peer: PeerSession, f: Inflight): void {
  const m = f.msg;
  if (m.done || isAcked(m, f.frag)) return;
  if (m.acked) m.acked[f.frag] = 1;
  if (++m.ackedCount < m.fragCount) return;
  m.done = true;
  peer.send.active.delete(m.id);
  if (m.kind !== 'request') {
    if (m.timer) clearTimeout(m.timer);
    const resolve = m.resolve;
    m.resolve = m.reject = null;
    resolve?.(undefined);
  }
}

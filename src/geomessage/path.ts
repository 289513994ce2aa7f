/**
 * Path choice: which of a peer's networks its packets go on, and when a network counts as failing.
 *
 * The seed's rule: the up network with the best smoothed RTT, the first listed on ties. RTTs within
 * 25% + 0.5 ms of the best count as ties, so near-equal networks do not flap and the first is
 * preferred. With no network known up, traffic probes: the most recently heard network, else the next
 * one in turn. The rules are pure functions of the links' state and `now` (unit-tested with a fake
 * clock); rechoose() applies them to a session and moves in-flight packets off a failed network.
 */
import type { TransportContext } from './context.js';
import { isAcked, type Link, type PeerSession } from './session.js';

/** What the rules read of a link. */
export interface PathView {
  readonly up: boolean;
  readonly lastHeard: number;
  readonly consecutiveTimeouts: number;
  readonly rtt: { readonly samples: number; readonly srtt: number; readonly rttvar: number };
}

/** RTTs up to best × TIE_FACTOR + TIE_SLACK_MS are ties. */
const TIE_FACTOR = 1.25;
const TIE_SLACK_MS = 0.5;

/**
 * The index of the path to use (-1: none configured). `current` is the path in use (-1: none); it
 * only matters when no path was ever heard, to rotate to the next one.
 */
export function bestPath(paths: readonly (PathView | null)[], current: number): number {
  let best = Infinity;
  for (const l of paths) if (l && l.up && l.rtt.samples) best = Math.min(best, l.rtt.srtt);
  for (let i = 0; i < paths.length; i++) {
    const l = paths[i];
    if (!l || !l.up) continue;
    // A path without an RTT sample yet is not known to be worse.
    if (best === Infinity || !l.rtt.samples || l.rtt.srtt <= best * TIE_FACTOR + TIE_SLACK_MS) return i;
  }
  // No path known up: try the most recently heard one (or rotate), so traffic probes for a path.
  let pick = -1;
  let newest = -Infinity;
  for (let i = 0; i < paths.length; i++) {
    const l = paths[i];
    if (l && l.lastHeard > newest) { newest = l.lastHeard; pick = i; }
  }
  return newest === -Infinity ? nextPath(paths, current) : pick;
}

/** The next configured path after `current` (-1: from the start), wrapping around; -1 if none. */
export function nextPath(paths: readonly (PathView | null)[], current: number): number {
  const n = paths.length;
  for (let k = 1; k <= n; k++) {
    const i = (current + k + n) % n;
    if (paths[i]) return i;
  }
  return -1;
}

/** The keepalive verdict: an up path silent for longer than networkTimeoutMs is down. */
export function silentTooLong(path: PathView, now: number, networkTimeoutMs: number): boolean {
  return path.up && now - path.lastHeard > networkTimeoutMs;
}

/**
 * The timer's verdict, sooner than the keepalive's: a path that timed out at least twice in a row
 * and has been silent for longer than its un-backed-off RTO (three times SRTT + 4·RTTVAR, at least
 * 50 ms, at most networkTimeoutMs) is failing. The caller moves the traffic only when another
 * path is up to take it.
 */
export function failingOnTimeouts(path: PathView, now: number, networkTimeoutMs: number): boolean {
  const quiet = Math.min(networkTimeoutMs, Math.max(50, 3 * (path.rtt.srtt + 4 * path.rtt.rttvar)));
  return path.up && path.consecutiveTimeouts >= 2 && now - path.lastHeard > quiet;
}

export function otherUpLink(peer: PeerSession, not: Link): boolean {
  return peer.links.some((l) => l && l !== not && l.up);
}

/** The link traffic to the peer goes on now, choosing one if none is. */
export function chosenLink(ctx: TransportContext, peer: PeerSession): Link | null {
  if (peer.chosen < 0) rechoose(ctx, peer);
  return peer.chosen >= 0 ? peer.links[peer.chosen]! : null;
}

/** Applies bestPath(); leaving a failed link resends what is in flight on it. */
export function rechoose(ctx: TransportContext, peer: PeerSession): void {
  const pick = bestPath(peer.links, peer.chosen);
  if (pick !== peer.chosen && pick >= 0) {
    const prev = peer.chosen;
    peer.chosen = pick;
    ctx.log.debug({ peer: peer.name, from: prev, to: pick, srtt: peer.links.map((l) => l?.rtt.srtt) }, 'network choice');
    if (prev >= 0) rerouteFrom(peer, prev);
  }
}

/** In-flight packets sent on a network we are leaving are resent on the new one at once. */
export function rerouteFrom(peer: PeerSession, linkIndex: number): void {
  const link = peer.links[linkIndex]!;
  if (link.up) return; // a preference change, not a failure: let acks arrive
  const q = peer.send.inflight;
  for (let pseq = q.low; pseq < q.high; pseq++) {
    const f = q.get(pseq);
    if (!f || f.link !== linkIndex) continue;
    q.delete(pseq);
    if (f.msg.done || isAcked(f.msg, f.frag)) continue;
    link.net.counters.failures++;
    peer.send.resendQueue.push(f);
  }
}

/**
 * The sender: turns messages into packets. A message is checked, numbered and queued; the pump sends
 * its fragments (resends first) while the congestion window and the socket allow, with acks riding
 * along when there is room; control packets (ping, pong, ack) go out the same way. It also keeps
 * each peer's retransmission timer armed for the oldest packet in flight, and ends messages that
 * fail (an ordered one leaves a tombstone so the receiver's order stream has no gap).
 *
 * Hot path: no object is made per packet (the header is reused, the payload is copied by range).
 */
import type { Payload, SendOptions } from './api.js';
import { nowMs, type TransportContext } from './context.js';
import { GeoMessageError, type GeoMessageErrorCode } from './errors.js';
import {
  ackBlockBytes, newSalt, writeAckBlock, writeHeader, F_ACKS, F_ORDERED, F_REQUEST, HEADER_BYTES, IP_UDP_OVERHEAD, PSEQ_LOW, TAG_BYTES, T_DATA, T_PING,
  type PacketHeader,
} from './packet.js';
import { chosenLink } from './path.js';
import { isAcked, SVC_TOMBSTONE, type Link, type MsgKind, type OutMsg, type PeerSession } from './session.js';

export function toBuffer(p: Payload): Buffer {
  if (Buffer.isBuffer(p)) return p;
  const arr = p as readonly Buffer[];
  return arr.length === 1 ? arr[0]! : Buffer.concat(arr as Buffer[]);
}

/** A request or one-way message from the API: refused at once, or queued with its promise. */
export function submit(ctx: TransportContext, peerName: string, service: number, payload: Payload, kind: MsgKind, opts?: SendOptions): Promise<Buffer | undefined> {
  if (ctx.closed) return Promise.reject(new GeoMessageError('GEOMSG_ERR_CLOSED', 'GeoMessage closed'));
  const peer = ctx.peers.get(peerName);
  if (!peer) return Promise.reject(new GeoMessageError('GEOMSG_ERR_UNKNOWN_PEER', `unknown peer ${peerName}`));
  if (peer.state === 'down') {
    // Probe at once: if the peer is back, the pong brings it up without waiting for the keepalive.
    probe(ctx, peer);
    // A message with its own deadline waits for the peer to come back within it (a start-up
    // "hello" after a network repair); without one, a down peer refuses at once (seed: no retries
    // after the Promote Failure Timeout).
    if (!(opts?.timeoutMs && opts.timeoutMs > 0)) {
      return Promise.reject(new GeoMessageError('GEOMSG_ERR_PEER_DOWN', `peer ${peerName} is down`));
    }
  }
  if (!Number.isInteger(service) || service < 0 || service >= SVC_TOMBSTONE) {
    return Promise.reject(new GeoMessageError('GEOMSG_ERR_CONFIG', `bad service ${service}`));
  }
  const data = toBuffer(payload);
  const ordered = opts?.ordered === true;
  let flags = kind === 'request' ? F_REQUEST : 0;
  if (ordered) flags |= F_ORDERED;
  let msg: OutMsg;
  try {
    checkSize(ctx, peer, data.length); // before taking an order slot: a refused message must leave no gap
    msg = makeMsg(ctx, peer, kind, service, flags, 0, ordered ? peer.send.nextOrderSeq++ : 0, data);
  } catch (err) {
    return Promise.reject(err as Error);
  }
  return new Promise<Buffer | undefined>((resolve, reject) => {
    msg.resolve = resolve;
    msg.reject = reject;
    const t = opts?.timeoutMs;
    if (t !== undefined && t > 0) {
      msg.timer = setTimeout(() => failMsg(ctx, peer, msg, 'GEOMSG_ERR_TIMEOUT', `no ${kind === 'request' ? 'reply' : 'acknowledgement'} from ${peerName} within ${t} ms`), t);
    }
    enqueue(ctx, peer, msg);
  });
}

export function checkSize(ctx: TransportContext, peer: PeerSession, len: number): void {
  if (len > ctx.maxMessage) throw new GeoMessageError('GEOMSG_ERR_TOO_LARGE', `message of ${len} bytes exceeds maxMessageBytes ${ctx.maxMessage}`);
  if (Math.ceil(len / peer.fragSize) > 0xffff) throw new GeoMessageError('GEOMSG_ERR_TOO_LARGE', `message of ${len} bytes exceeds ${0xffff} fragments`);
}

export function makeMsg(ctx: TransportContext, peer: PeerSession, kind: MsgKind, service: number, flags: number, corrId: number, orderSeq: number, data: Buffer): OutMsg {
  const fragSize = peer.fragSize;
  checkSize(ctx, peer, data.length);
  const fragCount = Math.max(1, Math.ceil(data.length / fragSize));
  return {
    id: peer.send.nextMsgId++, kind, service, flags, corrId, orderSeq, data, fragSize, fragCount, nextFrag: 0,
    ackedCount: 0, acked: fragCount > 1 ? new Uint8Array(fragCount) : null, done: false, resolve: null, reject: null, timer: null,
  };
}

export function enqueue(ctx: TransportContext, peer: PeerSession, msg: OutMsg): void {
  const c = peer.counters;
  c.rpcsOut++;
  c.bytesOut += msg.data.length;
  if (msg.fragCount > 1) { c.fragmented++; c.fragments += msg.fragCount; }
  peer.send.active.set(msg.id, msg);
  if (msg.kind === 'request') peer.send.awaitingReply.set(msg.id, msg);
  peer.send.queue.push(msg);
  pump(ctx, peer);
}

/** Sends queued fragments while the window allows. Retransmissions go first. */
export function pump(ctx: TransportContext, peer: PeerSession): void {
  if (peer.state !== 'up' || ctx.closed) return;
  const link = chosenLink(ctx, peer);
  if (!link) return;
  const s = peer.send;
  // Read once per run: messages only complete (raising the floor) outside the pump, and a floor
  // that is too low is merely conservative.
  const floor = msgFloor(peer);
  // One clock read per run: the packets of a run leave within microseconds of each other.
  const now = nowMs();
  // A full socket buffer stops the pump as a full window does; its drain event restarts it.
  while (s.inflight.size < peer.window.limit && link.out.writable) {
    const r = s.resendQueue.shift();
    if (r) {
      if (r.msg.done || isAcked(r.msg, r.frag)) continue;
      link.net.counters.resends++;
      sendFragment(ctx, peer, link, r.msg, r.frag, floor, now);
      continue;
    }
    const msg = s.queue[0];
    if (!msg) break;
    if (msg.done) { s.queue.shift(); continue; }
    const frag = msg.nextFrag++;
    if (msg.nextFrag >= msg.fragCount) s.queue.shift();
    sendFragment(ctx, peer, link, msg, frag, floor, now);
  }
  armRto(ctx, peer);
}

/** Fills the shared header for the peer's next packet number. */
function header(ctx: TransportContext, peer: PeerSession, type: number, flags: number): PacketHeader {
  const h = ctx.header;
  const s = peer.send;
  h.type = type; h.flags = flags; h.srcMachine = ctx.myId; h.dstMachine = peer.id; h.srcEpoch = ctx.epoch; h.dstEpoch = peer.epoch;
  const pseq = s.nextPseq++;
  // A tag nonce is salt ‖ low 32 bits of the number: a new salt each time those bits wrap.
  if (pseq % PSEQ_LOW === 0) [s.saltHi, s.saltLo] = newSalt();
  h.saltHi = s.saltHi; h.saltLo = s.saltLo;
  h.pseq = pseq; h.msgId = 0; h.corrId = 0; h.orderSeq = 0; h.totalLen = 0;
  h.msgFloor = 0; h.service = 0; h.fragIndex = 0; h.fragCount = 0; h.fragLen = 0;
  return h;
}

/** The lowest message id not yet fully acknowledged: the receiver may forget every id below it. */
function msgFloor(peer: PeerSession): number {
  for (const id of peer.send.active.keys()) return id;
  return peer.send.nextMsgId;
}

function sendFragment(ctx: TransportContext, peer: PeerSession, link: Link, msg: OutMsg, frag: number, floor: number, now: number): void {
  const start = frag * msg.fragSize;
  const end = Math.min(msg.data.length, start + msg.fragSize);
  const h = header(ctx, peer, T_DATA, msg.flags);
  h.msgId = msg.id; h.corrId = msg.corrId; h.orderSeq = msg.orderSeq; h.totalLen = msg.data.length;
  h.msgFloor = floor; h.service = msg.service; h.fragIndex = frag; h.fragCount = msg.fragCount; h.fragLen = end - start;
  // Acks ride along when there is room (full-size fragments rarely leave any).
  const recv = peer.recv;
  let ackPairs = 0;
  if (recv.ackPending) {
    const room = link.net.mtu - IP_UDP_OVERHEAD - HEADER_BYTES - TAG_BYTES - (end - start);
    ackPairs = Math.min(recv.ranges.r.length >> 1, (room - 2) >> 3);
    if (ackPairs >= 1) {
      h.flags |= F_ACKS;
      recv.ackPending = false;
    } else ackPairs = 0;
  }
  peer.window.onSent();
  peer.send.inflight.add(h.pseq, { msg, frag, sentAt: now, link: link.net.index });
  transmit(link, h, msg.data, start, end, ackPairs ? recv.ranges.r : null, ackPairs);
}

/**
 * Writes header, payload[start, end) and ack block into the link's output; the wire adds the tag
 * and sends. (A range rather than a subarray: no Buffer object per packet.)
 */
function transmit(link: Link, h: PacketHeader, payload: Buffer | null, start: number, end: number,
  acks: readonly number[] | null, ackPairs: number): void {
  const plen = payload ? end - start : 0;
  const bodyLen = HEADER_BYTES + plen + (acks ? ackBlockBytes(ackPairs) : 0);
  const out = link.out;
  const off = out.begin(bodyLen);
  const b = out.buf;
  writeHeader(b, h, off);
  if (plen) payload!.copy(b, off + HEADER_BYTES, start, end);
  if (acks) writeAckBlock(b, off + HEADER_BYTES + plen, acks, ackPairs);
  out.end();
  const c = link.net.counters;
  c.packetsOut++;
  c.bytesOut += bodyLen + TAG_BYTES;
}

/** Sends a ping, pong or ack (with the ack block when `withAcks` and there is one). */
export function sendControl(ctx: TransportContext, peer: PeerSession, link: Link, type: number, payload: Buffer | null, withAcks: boolean): void {
  const h = header(ctx, peer, type, 0);
  const recv = peer.recv;
  const withBlock = withAcks && recv.ranges.r.length > 0;
  let ackPairs = 0;
  if (withBlock) {
    const room = link.net.mtu - IP_UDP_OVERHEAD - HEADER_BYTES - TAG_BYTES - (payload ? payload.length : 0);
    ackPairs = Math.min(recv.ranges.r.length >> 1, (room - 2) >> 3);
    h.flags |= F_ACKS;
    recv.ackPending = false;
  }
  if (type === T_PING && peer.epoch === 0) h.dstEpoch = 0;
  h.fragLen = payload ? payload.length : 0;
  link.net.counters.other++;
  transmit(link, h, payload, 0, payload ? payload.length : 0, withBlock ? recv.ranges.r : null, ackPairs);
}

/** A ping carries its send time; the pong echoes it back as an RTT sample. */
export function ping(ctx: TransportContext, peer: PeerSession, link: Link): void {
  const ts = Buffer.allocUnsafe(8);
  ts.writeDoubleBE(nowMs(), 0);
  sendControl(ctx, peer, link, T_PING, ts, false);
}

export function pingAll(ctx: TransportContext, peer: PeerSession): void {
  for (const l of peer.links) if (l) ping(ctx, peer, l);
}

/** Pings every network of a peer now (at most every 50 ms). */
export function probe(ctx: TransportContext, peer: PeerSession): void {
  const now = nowMs();
  if (now - peer.lastEpochPing < 50) return;
  peer.lastEpochPing = now;
  pingAll(ctx, peer);
}

/**
 * Keeps one timer per peer, due no later than the oldest in-flight packet's RTO; it runs the loss
 * detector (ctx.rtoExpired). The timer is not cancelled when everything is acknowledged (a
 * request/response would otherwise create and clear a timer per message); a firing with nothing
 * expired just re-arms.
 */
export function armRto(ctx: TransportContext, peer: PeerSession): void {
  const s = peer.send;
  const first = s.inflight.first();
  if (!first) return;
  const due = first.sentAt + peer.links[first.link]!.rtt.rto;
  if (s.rtoTimer && s.rtoDue <= due) return;
  if (s.rtoTimer) clearTimeout(s.rtoTimer);
  s.rtoDue = due;
  s.rtoTimer = setTimeout(() => { s.rtoTimer = null; ctx.rtoExpired(peer); }, Math.max(1, due - nowMs()));
}

/** Fails every message to the peer; ordered slots become tombstones so the order stream stays gap-free. */
export function failAll(ctx: TransportContext, peer: PeerSession, code: GeoMessageErrorCode, text: string): void {
  for (const m of [...peer.send.active.values(), ...peer.send.awaitingReply.values()]) failMsg(ctx, peer, m, code, text);
}

export function failMsg(ctx: TransportContext, peer: PeerSession, msg: OutMsg, code: GeoMessageErrorCode, text: string): void {
  if (msg.timer) { clearTimeout(msg.timer); msg.timer = null; }
  const reject = msg.reject;
  msg.resolve = msg.reject = null;
  const s = peer.send;
  s.awaitingReply.delete(msg.id);
  if (!msg.done) {
    msg.done = true;
    s.active.delete(msg.id);
    if (msg.orderSeq && msg.service !== SVC_TOMBSTONE && code !== 'GEOMSG_ERR_PEER_RESTART' && code !== 'GEOMSG_ERR_CLOSED') {
      // The receiver waits for every order slot: fill the abandoned one with an empty tombstone.
      const t = makeMsg(ctx, peer, 'send', SVC_TOMBSTONE, F_ORDERED, 0, msg.orderSeq, Buffer.alloc(0));
      s.active.set(t.id, t);
      s.queue.push(t);
    }
  }
  if (reject) {
    peer.counters.failures++;
    reject(new GeoMessageError(code, text));
  }
}

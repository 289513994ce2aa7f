/**
 * Reassembly and ordering of received data packets: duplicate suppression by message id (bounded
 * by the sender's message floor), fragments copied into place until a message is whole, and ordered
 * messages ({ordered: true}, F_ORDERED) held back until every earlier order slot was delivered.
 * Whole messages go to rpc.ts: replies to their requests, the rest to their service's handler.
 */
import type { IncomingMessage, PayloadMemory } from './api.js';
import type { TransportContext } from './context.js';
import { F_ORDERED, F_REPLY, type PacketView } from './packet.js';
import { dispatch, onReply } from './rpc.js';
import type { HeldOrdered, Net, PeerSession } from './session.js';

/** An unfinished reassembly untouched for this long is dropped (its sender gave up or restarted). */
export const REASM_IDLE_MS = 120_000;

export function onData(ctx: TransportContext, peer: PeerSession, net: Net, p: PacketView, now: number): void {
  const recv = peer.recv;
  // The sender's floor lets us forget ids it will never send again.
  if (p.msgFloor > recv.deliveredBelow) {
    for (let id = recv.deliveredBelow; id < p.msgFloor && recv.delivered.size; id++) recv.delivered.delete(id);
    for (const id of recv.reasm.keys()) if (id < p.msgFloor) recv.reasm.delete(id);
    recv.deliveredBelow = p.msgFloor;
    while (recv.delivered.delete(recv.deliveredBelow)) recv.deliveredBelow++;
  }
  if (p.msgId < recv.deliveredBelow || recv.delivered.has(p.msgId)) { net.counters.duplicates++; return; }
  let data: Buffer;
  // Requests and one-way messages of a service with its own payload memory are received into it
  // (`lent`), except a one-packet message on a stable wire, whose packet buffer is the handler's.
  const mem = p.flags & F_REPLY ? null : ctx.payloadMem.get(p.service) ?? null;
  let lent: PayloadMemory | null = null;
  if (p.fragCount === 1) {
    if (p.fragLen !== p.totalLen) { net.counters.dropped.malformed++; return; }
    // The native wire reuses its receive buffer after the batch: the handler may keep the payload.
    const payload = p.buf.subarray(p.payloadOff, p.payloadOff + p.fragLen);
    if (net.wire.stableBuffers) data = payload;
    else if (mem) { data = mem.take(p.fragLen); payload.copy(data); lent = mem; }
    else data = Buffer.from(payload);
  } else {
    let r = recv.reasm.get(p.msgId);
    if (!r) {
      if (p.totalLen > p.fragCount * 0xffff || p.totalLen > ctx.maxMessage) { net.counters.dropped.malformed++; return; }
      // An abandoned reassembly's memory is not given back: the GC takes it.
      const buf = mem ? mem.take(p.totalLen) : Buffer.allocUnsafe(p.totalLen);
      r = { buf, mem, got: new Uint8Array(p.fragCount), count: p.fragCount, missing: p.fragCount, touched: 0 };
      recv.reasm.set(p.msgId, r);
    }
    if (r.count !== p.fragCount || r.buf.length !== p.totalLen) { net.counters.dropped.malformed++; return; }
    if (r.got[p.fragIndex]) { net.counters.duplicates++; return; }
    // Fragments other than the last are full: their size fixes every offset.
    const off = p.fragIndex === p.fragCount - 1 ? p.totalLen - p.fragLen : p.fragIndex * p.fragLen;
    if (off < 0 || off + p.fragLen > p.totalLen) { net.counters.dropped.malformed++; return; }
    p.buf.copy(r.buf, off, p.payloadOff, p.payloadOff + p.fragLen);
    r.got[p.fragIndex] = 1;
    r.touched = now;
    if (--r.missing > 0) return;
    recv.reasm.delete(p.msgId);
    data = r.buf;
    lent = r.mem;
  }
  // Delivered: remember the id so retransmits and reroutes are not delivered again.
  if (p.msgId === recv.deliveredBelow) {
    recv.deliveredBelow++;
    while (recv.delivered.delete(recv.deliveredBelow)) recv.deliveredBelow++;
  } else recv.delivered.add(p.msgId);
  peer.counters.rpcsIn++;
  peer.counters.bytesIn += data.length;
  if (p.flags & F_REPLY) return onReply(peer, p, data);
  const msg: IncomingMessage = { peer: peer.name, service: p.service, payload: data, ordered: (p.flags & F_ORDERED) !== 0 };
  if (p.flags & F_ORDERED) {
    // Ordered delivery: hold the message in its slot, then hand over every slot that is now next.
    if (p.orderSeq < recv.nextDeliverOrder) return; // slot already filled (its tombstone or original)
    recv.held.set(p.orderSeq, { msg, flags: p.flags, msgId: p.msgId, mem: lent });
    let h: HeldOrdered | undefined;
    while ((h = recv.held.get(recv.nextDeliverOrder))) {
      recv.held.delete(recv.nextDeliverOrder++);
      dispatch(ctx, peer, h.msg, h.flags, h.msgId, h.mem);
    }
    return;
  }
  dispatch(ctx, peer, msg, p.flags, p.msgId, lent);
}

/** Drops reassemblies idle for REASM_IDLE_MS (called from the transport's tick). */
export function expireReassemblies(peer: PeerSession, now: number): void {
  for (const [id, r] of peer.recv.reasm) if (now - r.touched > REASM_IDLE_MS) peer.recv.reasm.delete(id);
}

/**
 * RPC dispatch: a delivered message goes to its service's handler, whose result (or error) goes back
 * as the reply when the message was a request; a received reply settles the request waiting for it.
 * Payload memory lent by a service (PayloadMemory) is given back once its handler is done.
 */
import type { Handler, IncomingMessage, Payload, PayloadMemory } from './api.js';
import type { TransportContext } from './context.js';
import { GeoMessageError, type GeoMessageErrorCode } from './errors.js';
import { F_ERROR, F_REPLY, F_REQUEST, type PacketView } from './packet.js';
import { checkSize, enqueue, makeMsg, toBuffer } from './sender.js';
import { SVC_TOMBSTONE, type PeerSession } from './session.js';

/** Runs the service's handler; `lent` gets the payload back once the handler is done with it. */
export function dispatch(ctx: TransportContext, peer: PeerSession, msg: IncomingMessage, flags: number, msgId: number, lent: PayloadMemory | null): void {
  if (msg.service === SVC_TOMBSTONE) return;
  const isRequest = (flags & F_REQUEST) !== 0;
  const h = ctx.handlers.get(msg.service);
  if (!h) {
    if (isRequest) reply(ctx, peer, msgId, null, { code: 'GEOMSG_ERR_NO_HANDLER', message: `no handler for service ${msg.service} on ${ctx.machine}` });
    else ctx.log.warn({ peer: peer.name, service: msg.service }, 'message for a service without handler dropped');
    lent?.give(msg.payload);
    return;
  }
  let res: ReturnType<Handler>;
  try {
    res = h(msg);
  } catch (err) {
    lent?.give(msg.payload);
    if (isRequest) reply(ctx, peer, msgId, null, { code: 'GEOMSG_ERR_REMOTE', message: (err as Error)?.message ?? String(err) });
    else ctx.log.warn({ err, peer: peer.name, service: msg.service }, 'handler failed');
    return;
  }
  if (res && typeof (res as Promise<unknown>).then === 'function') {
    (res as Promise<Payload | void>).then(
      (v) => {
        lent?.give(msg.payload);
        if (isRequest) reply(ctx, peer, msgId, v ?? null, null);
      },
      (err: unknown) => {
        lent?.give(msg.payload);
        if (isRequest) reply(ctx, peer, msgId, null, { code: 'GEOMSG_ERR_REMOTE', message: (err as Error)?.message ?? String(err) });
        else ctx.log.warn({ err, peer: peer.name, service: msg.service }, 'handler failed');
      });
  } else {
    lent?.give(msg.payload);
    if (isRequest) reply(ctx, peer, msgId, (res as Payload | undefined) ?? null, null);
  }
}

/** Queues the reply to request `reqId`: the handler's payload, or its error as JSON. */
function reply(ctx: TransportContext, peer: PeerSession, reqId: number, payload: Payload | null, err: { code: string; message: string } | null): void {
  if (ctx.closed || peer.state === 'down') return;
  let data = err ? Buffer.from(JSON.stringify(err)) : payload ? toBuffer(payload) : Buffer.alloc(0);
  let flags = F_REPLY | (err ? F_ERROR : 0);
  try {
    checkSize(ctx, peer, data.length);
  } catch (e) {
    data = Buffer.from(JSON.stringify({ code: 'GEOMSG_ERR_REMOTE', message: (e as Error).message }));
    flags = F_REPLY | F_ERROR;
  }
  enqueue(ctx, peer, makeMsg(ctx, peer, 'reply', 0, flags, reqId, 0, data));
}

/** A reply arrived whole: settle its request (unless it already timed out or failed). */
export function onReply(peer: PeerSession, p: PacketView, data: Buffer): void {
  const s = peer.send;
  const req = s.awaitingReply.get(p.corrId);
  if (!req) return; // timed out or failed already
  s.awaitingReply.delete(p.corrId);
  peer.counters.replies++;
  // The reply proves the request arrived whole.
  if (!req.done) { req.done = true; s.active.delete(req.id); }
  if (req.timer) clearTimeout(req.timer);
  const { resolve, reject } = req;
  req.resolve = req.reject = null;
  if (p.flags & F_ERROR) {
    let code: GeoMessageErrorCode = 'GEOMSG_ERR_REMOTE';
    let text = data.toString('utf8');
    try {
      const e = JSON.parse(text) as { code?: string; message?: string };
      if (e.code === 'GEOMSG_ERR_NO_HANDLER') code = e.code;
      text = e.message ?? text;
    } catch { /* plain text */ }
    peer.counters.failures++;
    reject?.(new GeoMessageError(code, `${peer.name}: ${text}`));
  } else resolve?.(data);
}

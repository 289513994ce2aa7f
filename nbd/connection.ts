/**
 * One client connection: the handshake, then the transmission phase. Requests are parsed straight
 * out of the received chunks (a reused header object, payloads as views), dispatched to the
 * backend concurrently, and answered in completion order; replies produced in the same tick go out
 * in one writev (cork/uncork).
 */
import type { Socket } from 'node:net';
import type { Backend, Extent } from './backend.js';
import type { NbdLogger } from './log.js';
import { ByteQueue } from './protocol/byte-queue.js';
import {
  REQUEST_MAGIC, REQUEST_SIZE, Cmd, NbdErrno, CMD_FLAG_FUA, CMD_FLAG_NO_HOLE, CMD_FLAG_DF,
  CMD_FLAG_REQ_ONE, CMD_FLAG_FAST_ZERO, BASE_ALLOCATION_ID, STRUCTURED_HEADER_SIZE, SIMPLE_REPLY_SIZE,
  REPLY_FLAG_DONE, ReplyType,
} from './protocol/constants.js';
import {
  readRequestHeader, encodeSimpleReply, encodeReadChunkHeader, encodeErrorChunk, encodeBlockStatusChunk,
  writeStructuredHeader, writeSimpleReply, writeU64, type RequestHeader,
} from './protocol/wire.js';
import { Handshake, type TransmissionParams } from './handshake.js';
import { blockSizesOf, type ExportRegistry } from './exports.js';
import { toNbdErrno } from './errno.js';
import { getBuffer, getReusableBuffer, isPooled, releaseBuffer } from './protocol/buffer-pool.js';

export interface ConnectionContext {
  registry: ExportRegistry;
  log: NbdLogger;
  maxPayload: number;
}

/** Above this many requests in flight we stop reading from the socket (backpressure). */
const MAX_INFLIGHT = 256;
const RESUME_INFLIGHT = 128;
/** Payload remainders from this size on are read by the kernel straight into the payload buffer. */
const DIRECT_MIN = 64 * 1024;
/** Reply batches up to this size are joined into one buffer before writing. */
const JOIN_LIMIT = 64 * 1024;
/** Above this many queued reply bytes we stop reading until the socket drains. */
const MAX_QUEUED_REPLY = 64 * 1024 * 1024;

const CMD_NAMES = ['READ', 'WRITE', 'DISC', 'FLUSH', 'TRIM', 'CACHE', 'WRITE_ZEROES', 'BLOCK_STATUS'];

export class NbdConnection {
  private readonly q = new ByteQueue();
  private phase: 'handshake' | 'transmission' | 'draining' | 'closed' = 'handshake';
  private handshake: Handshake | undefined;
  private backend!: Backend;
  private size = 0;
  private readOnly = false;
  private canFastZero = false;
  private structured = false;
  private baseAllocation = false;
  private minBlock = 1;
  private inflight = 0;
  private paused = false;
  /** The payload view handed to the socket as its next read buffer (onread mode), if any. */
  private direct: Buffer | undefined;
  /** A WRITE whose payload is still arriving. */
  private fill: { buf: Buffer; pos: number; hdr: RequestHeader } | undefined;
  /** Received chunks are overwritten after each callback (onread mode): keep no views of them. */
  private readonly transient: boolean;
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private flushScheduled = false;
  private readonly hdr: RequestHeader = { magic: 0, flags: 0, type: 0, cookieHi: 0, cookieLo: 0, offset: 0, offsetHi: 0, length: 0 };
  private readonly onClosed: (c: NbdConnection) => void;
  readonly peer: string;
  exportName: string | undefined;

  /**
   * `transient`: the socket delivers data through `onChunk` from one reused buffer (net's `onread`
   * mode, no allocation per read) instead of 'data' events with fresh buffers.
   */
  constructor(private readonly socket: Socket, private readonly ctx: ConnectionContext,
    onClosed: (c: NbdConnection) => void, direct?: TransmissionParams, transient = false) {
    this.onClosed = onClosed;
    this.transient = transient;
    this.peer = socket.remoteAddress ? `${socket.remoteAddress}:${socket.remotePort}` : 'unix';
    socket.setNoDelay?.(true);
    if (!transient) socket.on('data', (chunk: Buffer) => { this.q.push(chunk); this.pump(); });
    // In onread mode no data flows through the stream, but only a flowing stream emits 'end'.
    else socket.resume();
    socket.on('end', () => this.onEnd());
    socket.on('error', (err) => this.ctx.log.debug({ peer: this.peer, err: err.message }, 'nbd connection error'));
    socket.on('close', () => this.closed());
    socket.on('drain', () => this.maybeResume());
    if (direct) this.enterTransmission(direct);
    else {
      this.handshake = new Handshake(ctx.registry, (b) => this.out(b), ctx.maxPayload);
      this.handshake.greet();
    }
  }

  get inFlight(): number { return this.inflight; }

  /** Data from a reused read buffer (onread mode): parsed now, leftovers copied before returning. */
  onChunk(chunk: Buffer): void {
    this.q.push(chunk);
    this.pump();
    this.q.retain();
  }

  /**
   * onread mode: the buffer the socket reads into next. While a large WRITE payload is arriving,
   * that is the rest of the payload buffer itself, so the kernel copies the data straight to its
   * destination (no second copy); otherwise the connection's reused receive buffer.
   */
  nextReadBuffer(receive: Buffer): Buffer {
    const f = this.fill;
    if (f && f.buf.length - f.pos >= DIRECT_MIN && this.phase === 'transmission') {
      this.direct = f.buf.subarray(f.pos);
      return this.direct;
    }
    this.direct = undefined;
    return receive;
  }

  /** onread mode: `n` bytes were read into `buf` (the receive buffer or a payload view). */
  onRead(n: number, buf: Uint8Array): void {
    if (buf === this.direct && this.fill) {
      this.direct = undefined;
      const f = this.fill;
      f.pos += n;
      if (f.pos < f.buf.length) return;
      this.fill = undefined;
      this.dispatch(f.hdr, f.buf);
      if (!this.overloaded()) this.pump();
      return;
    }
    this.onChunk(Buffer.from(buf.buffer, buf.byteOffset, n));
  }

  /** Stops reading new requests, lets in-flight ones finish, then closes (server shutdown). */
  shutdown(): void {
    if (this.phase === 'closed') return;
    if (this.phase !== 'transmission') { this.socket.destroy(); return; }
    this.phase = 'draining';
    this.socket.pause();
    this.finishIfDrained();
  }

  destroy(): void { this.socket.destroy(); }

  private enterTransmission(p: TransmissionParams): void {
    this.handshake = undefined;
    this.phase = 'transmission';
    this.backend = p.exp.backend;
    this.exportName = p.exp.name;
    this.size = this.backend.size();
    this.readOnly = this.backend.flags().readOnly;
    this.canFastZero = this.backend.flags().canFastZero;
    this.structured = p.structured;
    this.baseAllocation = p.baseAllocation;
    this.minBlock = blockSizesOf(this.backend, this.ctx.maxPayload).minimum;
    // `reads` says which receive path serves the connection (tests check the reused buffer really engaged).
    this.ctx.log.debug({ peer: this.peer, export: p.exp.name, structured: p.structured, reads: this.transient ? 'onread' : 'data' }, 'nbd transmission');
  }

  /** Ends this connection only, after a protocol violation, with a log line. */
  private fatal(reason: string): void {
    this.ctx.log.warn({ peer: this.peer, export: this.exportName, reason }, 'nbd protocol violation: closing connection');
    this.phase = 'closed';
    this.socket.destroy();
  }

  private onEnd(): void {
    if (this.phase === 'closed') return;
    if (this.q.length > 0 || this.fill) {
      this.ctx.log.warn({ peer: this.peer, export: this.exportName, pending: this.q.length }, 'nbd stream ended inside a message: closing connection');
    }
    // The client half-closed: finish what is in flight, then close our side.
    if (this.phase === 'transmission') { this.phase = 'draining'; this.finishIfDrained(); } else this.socket.destroy();
  }

  private closed(): void {
    if (this.phase !== 'closed') this.phase = 'closed';
    this.onClosed(this);
  }

  private pump(): void {
    const q = this.q;
    while (this.phase !== 'closed' && this.phase !== 'draining') {
      if (this.phase === 'handshake') {
        const outcome = this.handshake!.consume(q);
        if (!outcome) return;
        if (outcome.kind === 'close') {
          if (outcome.violation) this.fatal(outcome.reason);
          else {
            this.ctx.log.debug({ peer: this.peer, reason: outcome.reason }, 'nbd handshake ended');
            this.phase = 'closed';
            this.endThenDestroy();
          }
          return;
        }
        this.enterTransmission(outcome.params);
        continue;
      }
      if (this.fill) {
        // Copying a WRITE payload that arrives over several chunks into its own buffer.
        const f = this.fill;
        const n = Math.min(q.length, f.buf.length - f.pos);
        q.copyOut(f.buf, f.pos, n);
        f.pos += n;
        if (f.pos < f.buf.length) return;
        this.fill = undefined;
        this.dispatch(f.hdr, f.buf);
        if (this.overloaded()) return;
        continue;
      }
      if (q.length < REQUEST_SIZE) return;
      const buf = q.contiguous(REQUEST_SIZE);
      const h = this.hdr;
      readRequestHeader(buf, q.pos, h);
      if (h.magic !== REQUEST_MAGIC) { this.fatal(`bad request magic 0x${h.magic.toString(16)}`); return; }
      let payload: Buffer | undefined;
      if (h.type === Cmd.WRITE) {
        if (h.length > this.ctx.maxPayload) { this.fatal(`WRITE payload of ${h.length} bytes exceeds ${this.ctx.maxPayload}`); return; }
        q.skip(REQUEST_SIZE);
        if (!this.transient && q.isContiguous(h.length)) payload = q.take(h.length); // a view: no copy
        else {
          // Received chunks are reused (or the payload straddles chunks): copy into a buffer of
          // its own, reused once the backend gives it back on completion (writeCb contract).
          const dst = this.backend.writeCb ? getReusableBuffer(h.length) : Buffer.allocUnsafe(h.length);
          const n = Math.min(q.length, h.length);
          q.copyOut(dst, 0, n);
          if (n < h.length) {
            this.fill = { buf: dst, pos: n, hdr: { ...h } };
            return;
          }
          payload = dst;
        }
      } else {
        q.skip(REQUEST_SIZE);
      }
      if (h.type === Cmd.DISC) {
        this.phase = 'draining';
        this.socket.pause();
        this.finishIfDrained();
        return;
      }
      this.dispatch(h, payload);
      if (this.overloaded()) return;
    }
  }

  /** Stops reading while too much is in flight or queued (backpressure); true when it did. */
  private overloaded(): boolean {
    if (this.inflight < MAX_INFLIGHT && this.socket.writableLength <= MAX_QUEUED_REPLY) return false;
    this.paused = true;
    this.socket.pause();
    return true;
  }

  private maybeResume(): void {
    if (this.paused && this.phase === 'transmission' && this.inflight <= RESUME_INFLIGHT && this.socket.writableLength <= MAX_QUEUED_REPLY) {
      this.paused = false;
      this.socket.resume();
      this.pump();
    }
  }

  private finishIfDrained(): void {
    if (this.phase === 'draining' && this.inflight === 0) {
      this.phase = 'closed';
      this.endThenDestroy(); // replies still waiting for the batch go out before the FIN
    }
  }

  /** Sends what is queued, then FIN; closes once flushed (nothing more is read after DISC). */
  private endThenDestroy(): void {
    this.flush();
    this.socket.end(() => this.socket.destroy());
  }

  /**
   * Queues reply bytes. Everything produced before the event loop's check phase (all completions of
   * one poll round) leaves in one socket write: small batches are joined into one buffer (a copy is
   * cheaper than a stream write per reply), large ones go out as one corked writev.
   */
  private out(b: Buffer): void {
    if (this.socket.destroyed) return;
    this.pending.push(b);
    this.pendingBytes += b.length;
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(flushReplies, this);
    }
  }

  /** @internal */
  flush(): void {
    this.flushScheduled = false;
    const list = this.pending;
    if (list.length === 0 || this.socket.destroyed) { list.length = 0; this.pendingBytes = 0; return; }
    if (list.length === 1) this.write(list[0]!);
    else if (this.pendingBytes <= JOIN_LIMIT) {
      const joined = getBuffer(this.pendingBytes);
      let p = 0;
      for (const b of list) { b.copy(joined, p); p += b.length; }
      this.socket.write(joined);
    }
    else {
      this.socket.cork();
      for (const b of list) this.write(b);
      this.socket.uncork();
    }
    this.pending = [];
    this.pendingBytes = 0;
  }

  /** Writes one buffer; a pooled one goes back to the pool once the socket is done with it. */
  private write(b: Buffer): void {
    if (isPooled(b)) this.socket.write(b, () => releaseBuffer(b));
    else this.socket.write(b);
  }

  private dispatch(h: RequestHeader, payload: Buffer | undefined): void {
    const type = h.type;
    const flags = h.flags;
    const hi = h.cookieHi;
    const lo = h.cookieLo;
    const offset = h.offset;
    const length = h.length;
    const err = this.validate(h);
    if (err !== 0) {
      this.ctx.log.debug({ peer: this.peer, cmd: CMD_NAMES[type] ?? type, offset, length, flags, errno: err }, 'nbd request refused');
      this.replyError(type, hi, lo, err, '');
      return;
    }
    const b = this.backend;
    this.inflight++;
    switch (type) {
      case Cmd.READ:
        if (b.readInto) {
          // Read straight into the reply buffer, behind room for its header.
          const hl = this.structured ? STRUCTURED_HEADER_SIZE + 8 : SIMPLE_REPLY_SIZE;
          const reply = getBuffer(hl + length);
          b.readInto(offset, length, reply, hl, (e) => {
            if (e) { releaseBuffer(reply); this.failed(type, hi, lo, e); return; }
            if (this.structured) {
              writeStructuredHeader(reply, 0, REPLY_FLAG_DONE, ReplyType.OFFSET_DATA, hi, lo, 8 + length);
              writeU64(reply, STRUCTURED_HEADER_SIZE, offset);
            } else writeSimpleReply(reply, 0, hi, lo);
            this.out(reply);
            this.done();
          });
        } else {
          b.read(offset, length).then((data) => this.replyRead(hi, lo, offset, data), (e) => this.failed(type, hi, lo, e));
        }
        return;
      case Cmd.WRITE: {
        const fua = (flags & CMD_FLAG_FUA) !== 0;
        const data = payload!;
        if (b.writeCb) {
          b.writeCb(offset, data, fua, (e) => {
            releaseBuffer(data); // only pooled and reusable buffers are taken back
            if (e) this.failed(type, hi, lo, e); else this.replyOk(hi, lo);
          });
        } else b.write(offset, data, { fua }).then(() => this.replyOk(hi, lo), (e) => this.failed(type, hi, lo, e));
        return;
      }
      case Cmd.FLUSH:
        b.flush().then(() => this.replyOk(hi, lo), (e) => this.failed(type, hi, lo, e));
        return;
      case Cmd.TRIM:
        b.trim(offset, length, { fua: (flags & CMD_FLAG_FUA) !== 0 }).then(() => this.replyOk(hi, lo), (e) => this.failed(type, hi, lo, e));
        return;
      case Cmd.WRITE_ZEROES:
        b.zero(offset, length, {
          fua: (flags & CMD_FLAG_FUA) !== 0, noHole: (flags & CMD_FLAG_NO_HOLE) !== 0, fastZero: (flags & CMD_FLAG_FAST_ZERO) !== 0,
        }).then(() => this.replyOk(hi, lo), (e) => this.failed(type, hi, lo, e));
        return;
      case Cmd.CACHE:
        (b.cache ? b.cache(offset, length) : Promise.resolve()).then(() => this.replyOk(hi, lo), (e) => this.failed(type, hi, lo, e));
        return;
      case Cmd.BLOCK_STATUS: {
        const reqOne = (flags & CMD_FLAG_REQ_ONE) !== 0;
        (b.blockStatus ? b.blockStatus(offset, length) : Promise.resolve([{ length, flags: 0 }]))
          .then((ext) => this.replyBlockStatus(hi, lo, length, reqOne, ext), (e) => this.failed(type, hi, lo, e));
        return;
      }
    }
  }

  /** Returns 0 when the request may go to the backend, else the errno to answer with. */
  private validate(h: RequestHeader): number {
    const { type, flags, offset, length } = h;
    let allowed = CMD_FLAG_FUA; // the spec lets clients set FUA on any command
    switch (type) {
      case Cmd.READ: if (this.structured) allowed |= CMD_FLAG_DF; break;
      case Cmd.WRITE_ZEROES: allowed |= CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO; break;
      case Cmd.BLOCK_STATUS: allowed |= CMD_FLAG_REQ_ONE; break;
      case Cmd.WRITE: case Cmd.FLUSH: case Cmd.TRIM: case Cmd.CACHE: break;
      default: return NbdErrno.EINVAL; // unknown command
    }
    if ((flags & ~allowed) !== 0) return NbdErrno.EINVAL;
    if (type === Cmd.FLUSH) return 0;
    const writes = type === Cmd.WRITE || type === Cmd.TRIM || type === Cmd.WRITE_ZEROES;
    if (writes && this.readOnly) return NbdErrno.EPERM;
    if (length === 0) return NbdErrno.EINVAL;
    if (type === Cmd.READ && length > this.ctx.maxPayload) {
      return (flags & CMD_FLAG_DF) !== 0 ? NbdErrno.EOVERFLOW : NbdErrno.EINVAL;
    }
    if (h.offsetHi >= 0x200000 || offset + length > this.size) {
      return type === Cmd.WRITE || type === Cmd.WRITE_ZEROES ? NbdErrno.ENOSPC : NbdErrno.EINVAL;
    }
    if (this.minBlock > 1 && (offset % this.minBlock !== 0 || length % this.minBlock !== 0)) return NbdErrno.EINVAL;
    if (type === Cmd.BLOCK_STATUS && (!this.structured || !this.baseAllocation)) return NbdErrno.EINVAL;
    if (type === Cmd.WRITE_ZEROES && (flags & CMD_FLAG_FAST_ZERO) !== 0 && !this.canFastZero) return NbdErrno.ENOTSUP;
    return 0;
  }

  private done(): void {
    this.inflight--;
    if (this.phase === 'draining') this.finishIfDrained();
    else if (this.paused) this.maybeResume();
  }

  private replyOk(hi: number, lo: number): void {
    const r = getBuffer(SIMPLE_REPLY_SIZE);
    writeSimpleReply(r, 0, hi, lo);
    this.out(r);
    this.done();
  }

  private replyRead(hi: number, lo: number, offset: number, data: Buffer): void {
    this.out(this.structured ? encodeReadChunkHeader(hi, lo, offset, data.length) : encodeSimpleReply(0, hi, lo));
    this.out(data);
    this.done();
  }

  private replyBlockStatus(hi: number, lo: number, length: number, reqOne: boolean, extents: Extent[]): void {
    // Trim the backend's answer to the request: never past its end, at most one extent with REQ_ONE.
    const out: Extent[] = [];
    let left = length;
    for (const e of extents) {
      if (left <= 0 || e.length <= 0) break;
      const l = Math.min(e.length, left);
      out.push({ length: l, flags: e.flags });
      left -= l;
      if (reqOne || out.length >= 1024) break;
    }
    if (out.length === 0) out.push({ length, flags: 0 });
    this.out(encodeBlockStatusChunk(hi, lo, BASE_ALLOCATION_ID, out));
    this.done();
  }

  private failed(type: number, hi: number, lo: number, e: unknown): void {
    const errno = toNbdErrno(e);
    this.ctx.log.debug({ peer: this.peer, cmd: CMD_NAMES[type], errno, err: e instanceof Error ? e.message : String(e) }, 'nbd backend error');
    this.replyError(type, hi, lo, errno, e instanceof Error ? e.message : '');
    this.done();
  }

  private replyError(type: number, hi: number, lo: number, errno: number, message: string): void {
    // With structured replies, READ and BLOCK_STATUS answer errors with an error chunk.
    if (this.structured && (type === Cmd.READ || type === Cmd.BLOCK_STATUS)) this.out(encodeErrorChunk(hi, lo, errno, message.slice(0, 200)));
    else this.out(encodeSimpleReply(errno, hi, lo));
  }
}

function flushReplies(c: NbdConnection): void { c.flush(); }

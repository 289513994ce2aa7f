/**
 * The fixed-newstyle handshake as a state machine over a ByteQueue. It writes replies through
 * `send` and returns an outcome once the client enters transmission (EXPORT_NAME, GO), aborts, or
 * breaks the protocol. No sockets here, so the tests and the fuzzer can drive it directly.
 */
import { ByteQueue } from './protocol/byte-queue.js';
import {
  IHAVEOPT, OPTION_HEADER_SIZE, Opt, Rep, Info, CLIENT_FLAG_FIXED_NEWSTYLE, CLIENT_FLAG_NO_ZEROES,
  BASE_ALLOCATION, BASE_ALLOCATION_ID, MAX_OPTION_DATA,
} from './protocol/constants.js';
import {
  encodeGreeting, encodeOptionReply, encodeServerEntry, encodeInfoExport, encodeInfoString,
  encodeInfoBlockSize, encodeMetaContext, encodeExportNameReply, parseInfoRequest, parseMetaContextRequest,
} from './protocol/wire.js';
import { ExportRegistry, blockSizesOf, transmissionFlags, type ExportSpec } from './exports.js';

export interface TransmissionParams {
  exp: ExportSpec;
  structured: boolean;
  /** base:allocation selected for this export (BLOCK_STATUS allowed). */
  baseAllocation: boolean;
}

export type HandshakeOutcome =
  | { kind: 'transmission'; params: TransmissionParams }
  | { kind: 'close'; reason: string; violation: boolean };

const IHAVEOPT_HI = Number(IHAVEOPT >> 32n);
const IHAVEOPT_LO = Number(IHAVEOPT & 0xffffffffn);

export class Handshake {
  private stage: 'flags' | 'option' | 'skip' = 'flags';
  private noZeroes = false;
  private structured = false;
  /** Export name the last SET_META_CONTEXT applied to, and whether it selected base:allocation. */
  private metaExport: string | undefined;
  private metaBase = false;
  private skipLeft = 0;
  private skipOption = 0;

  constructor(
    private readonly registry: ExportRegistry,
    private readonly send: (b: Buffer) => void,
    private readonly maxPayload: number,
  ) {}

  greet(): void { this.send(encodeGreeting()); }

  /** Consumes what it can; returns an outcome when the handshake ends, else null (needs more bytes). */
  consume(q: ByteQueue): HandshakeOutcome | null {
    for (;;) {
      if (this.stage === 'flags') {
        if (q.length < 4) return null;
        const flags = q.take(4).readUInt32BE(0);
        if ((flags & ~(CLIENT_FLAG_FIXED_NEWSTYLE | CLIENT_FLAG_NO_ZEROES)) !== 0) {
          return { kind: 'close', reason: `unknown client flags 0x${flags.toString(16)}`, violation: true };
        }
        this.noZeroes = (flags & CLIENT_FLAG_NO_ZEROES) !== 0;
        this.stage = 'option';
        continue;
      }
      if (this.stage === 'skip') {
        this.skipLeft -= q.discard(this.skipLeft);
        if (this.skipLeft > 0) return null;
        this.stage = 'option';
        this.reply(this.skipOption, Rep.ERR_TOO_BIG, 'option data too large');
        continue;
      }
      if (q.length < OPTION_HEADER_SIZE) return null;
      const h = q.contiguous(OPTION_HEADER_SIZE);
      const p = q.pos;
      if (h.readUInt32BE(p) !== IHAVEOPT_HI || h.readUInt32BE(p + 4) !== IHAVEOPT_LO) {
        return { kind: 'close', reason: 'bad option magic', violation: true };
      }
      const option = h.readUInt32BE(p + 8);
      const len = h.readUInt32BE(p + 12);
      if (len > MAX_OPTION_DATA) {
        q.skip(OPTION_HEADER_SIZE);
        if (option === Opt.EXPORT_NAME) return { kind: 'close', reason: 'oversized EXPORT_NAME', violation: true };
        this.stage = 'skip';
        this.skipLeft = len;
        this.skipOption = option;
        continue;
      }
      if (q.length < OPTION_HEADER_SIZE + len) return null;
      q.skip(OPTION_HEADER_SIZE);
      const data = Buffer.from(q.take(len)); // own copy: option data is small and parsed lazily
      const outcome = this.option(option, data);
      if (outcome) return outcome;
    }
  }

  private reply(option: number, type: number, data?: Buffer | string): void {
    this.send(encodeOptionReply(option, type, typeof data === 'string' ? Buffer.from(data, 'utf8') : data));
  }

  private option(option: number, data: Buffer): HandshakeOutcome | null {
    switch (option) {
      case Opt.EXPORT_NAME: {
        const exp = this.registry.find(data.toString('utf8'));
        // EXPORT_NAME has no error reply: the only way to refuse is to close.
        if (!exp) return { kind: 'close', reason: `EXPORT_NAME for unknown export '${data.toString('utf8')}'`, violation: false };
        this.send(encodeExportNameReply(exp.backend.size(), transmissionFlags(exp.backend, this.structured), this.noZeroes));
        return this.enter(exp);
      }
      case Opt.ABORT:
        this.reply(option, Rep.ACK);
        return { kind: 'close', reason: 'client aborted', violation: false };
      case Opt.LIST:
        if (data.length !== 0) { this.reply(option, Rep.ERR_INVALID, 'LIST takes no data'); return null; }
        for (const e of this.registry.list()) this.reply(option, Rep.SERVER, encodeServerEntry(e.name, e.description));
        this.reply(option, Rep.ACK);
        return null;
      case Opt.INFO:
      case Opt.GO:
        return this.infoOrGo(option, data);
      case Opt.STRUCTURED_REPLY:
        if (data.length !== 0) { this.reply(option, Rep.ERR_INVALID, 'STRUCTURED_REPLY takes no data'); return null; }
        this.structured = true;
        this.reply(option, Rep.ACK);
        return null;
      case Opt.LIST_META_CONTEXT:
      case Opt.SET_META_CONTEXT:
        this.metaContext(option, data);
        return null;
      case Opt.STARTTLS:
        // This server runs in NOTLS mode; the spec asks such a server to answer ERR_UNSUP.
        this.reply(option, Rep.ERR_UNSUP, 'TLS is not supported by this server');
        return null;
      case Opt.EXTENDED_HEADERS:
        // Not implemented: clients fall back to compact headers on ERR_UNSUP.
        this.reply(option, Rep.ERR_UNSUP, 'extended headers are not supported');
        return null;
      default:
        this.reply(option, Rep.ERR_UNSUP, `unknown option ${option}`);
        return null;
    }
  }

  private infoOrGo(option: number, data: Buffer): HandshakeOutcome | null {
    const req = parseInfoRequest(data);
    if (!req) { this.reply(option, Rep.ERR_INVALID, 'malformed INFO/GO request'); return null; }
    const exp = this.registry.find(req.name);
    if (!exp) { this.reply(option, Rep.ERR_UNKNOWN, `unknown export '${req.name}'`); return null; }
    const b = exp.backend;
    this.reply(option, Rep.INFO, encodeInfoExport(b.size(), transmissionFlags(b, this.structured)));
    const sent = new Set<number>();
    for (const r of req.requests) {
      if (sent.has(r)) continue;
      sent.add(r);
      if (r === Info.NAME) this.reply(option, Rep.INFO, encodeInfoString(Info.NAME, exp.name));
      else if (r === Info.DESCRIPTION && exp.description !== undefined) {
        this.reply(option, Rep.INFO, encodeInfoString(Info.DESCRIPTION, exp.description));
      }
    }
    // Block sizes are sent unasked: the spec recommends it, and our limits are lenient anyway.
    const bs = blockSizesOf(b, this.maxPayload);
    this.reply(option, Rep.INFO, encodeInfoBlockSize(bs.minimum, bs.preferred, bs.maximum));
    this.reply(option, Rep.ACK);
    return option === Opt.GO ? this.enter(exp) : null;
  }

  private enter(exp: ExportSpec): HandshakeOutcome {
    // A context selected for another export does not carry over (the spec ties it to the name).
    const base = this.metaBase && this.metaExport !== undefined && this.registry.find(this.metaExport) === exp;
    return { kind: 'transmission', params: { exp, structured: this.structured, baseAllocation: base } };
  }

  private metaContext(option: number, data: Buffer): void {
    if (!this.structured) { this.reply(option, Rep.ERR_INVALID, 'negotiate structured replies first'); return; }
    const req = parseMetaContextRequest(data);
    if (!req) { this.reply(option, Rep.ERR_INVALID, 'malformed meta context request'); return; }
    const exp = this.registry.find(req.name);
    if (!exp) { this.reply(option, Rep.ERR_UNKNOWN, `unknown export '${req.name}'`); return; }
    const list = option === Opt.LIST_META_CONTEXT;
    // LIST with no queries, or with the bare "base:" namespace, lists everything we have.
    const match = req.queries.some((q) => q === BASE_ALLOCATION || (list && q === 'base:')) || (list && req.queries.length === 0);
    if (match) this.reply(option, Rep.META_CONTEXT, encodeMetaContext(list ? 0 : BASE_ALLOCATION_ID, BASE_ALLOCATION));
    if (!list) {
      this.metaExport = req.name;
      this.metaBase = match;
    }
    this.reply(option, Rep.ACK);
  }
}

import { SVC_WRITEV, HEADER_BYTES, WRITEV_FIRST_ENTRY, putBatchCount, writeHeader } from './protocol.js';
import type { PeerTransport } from './ports.js';
import { getPooledBuffer, releaseBuffer } from '../../nbd/protocol/buffer-pool.js';

/** Called once per write: null when the peer wrote it, else the error. */
export type MirrorDone = (err: unknown) => void;

/**
 * Coalesces the application writes mirrored in one event-loop turn into one GeoMessage message
 * (SVC_WRITEV). At queue depth 32 with 4 KiB writes this turns 32 messages, 32 replies and their
 * acknowledgements into one message and one reply: fewer packets and less work per write on both
 * sides. Entries keep their order inside a batch and batches keep theirs on the ordered channel,
 * so async write order is preserved. A failed batch fails every write in it. Batches are sent
 * without waiting for earlier ones (many ordered messages in flight).
 *
 * Each write is copied into the batch's message as it is added: the caller may reuse its buffer as
 * soon as add() returns (async acknowledges a write before its remote copy is done and needs no copy
 * of its own), and the message is one contiguous pooled buffer, reused once the request is answered.
 * Fresh ArrayBuffer bytes per write or per message are what drives V8 into frequent full GCs at high
 * write rates. GeoMessage does not use a payload after its request has settled.
 */
export class WriteBatcher {
  /** The message being filled (a pooled buffer), its write position and its entry count. */
  private msg: Buffer | null = null;
  private pos = 0;
  private count = 0;
  private dones: MirrorDone[] = [];
  /** Size to start the next batch's buffer with: the last batch's (sizes recur under steady load). */
  private expect = 4096;
  private scheduled = false;
  private readonly flushNow = (): void => { this.scheduled = false; this.flush(); };

  constructor(private readonly net: PeerTransport, private readonly peer: string, private readonly ordered: boolean,
    private readonly maxBytes = 512 * 1024) {}

  /** Callback form (I/O path). `data` is copied before add returns. */
  add(kind: number, flags: number, offset: number, data: Buffer, done: MirrorDone): void {
    const need = HEADER_BYTES + data.length;
    // A batch holds up to maxBytes of entries (a larger write gets a batch of its own).
    if (this.count > 0 && this.pos - WRITEV_FIRST_ENTRY + need > this.maxBytes) this.flush();
    let msg = this.msg;
    if (!msg) { msg = this.msg = getPooledBuffer(Math.max(WRITEV_FIRST_ENTRY + need, this.expect)); this.pos = WRITEV_FIRST_ENTRY; }
    else if (this.pos + need > msg.length) msg = this.grow(this.pos + need);
    writeHeader(msg, this.pos, kind, flags, offset, data.length);
    data.copy(msg, this.pos + HEADER_BYTES);
    this.pos += need;
    this.count++;
    this.dones.push(done);
    if (this.pos - WRITEV_FIRST_ENTRY >= this.maxBytes) this.flush();
    else if (!this.scheduled) { this.scheduled = true; setImmediate(this.flushNow); }
  }

  /**
   * A bigger buffer for the batch being filled: doubling, up to a full batch. The buffer starts at
   * the size of the last batch rather than a full one: with many small batches in flight (async to
   * a distant peer under a large HWM) full-size buffers would hold far more memory than data.
   */
  private grow(min: number): Buffer {
    const old = this.msg!;
    const b = getPooledBuffer(Math.max(min, Math.min(2 * old.length, WRITEV_FIRST_ENTRY + this.maxBytes)));
    old.copy(b, 0, 0, this.pos);
    releaseBuffer(old);
    return (this.msg = b);
  }

  /** Resolves true when the peer wrote it, or with the error. */
  write(kind: number, flags: number, offset: number, data: Buffer): Promise<unknown> {
    return new Promise((resolve) => this.add(kind, flags, offset, data, (err) => resolve(err === null ? true : err)));
  }

  flush(): void {
    const whole = this.msg;
    const n = this.count;
    if (!whole || n === 0) return;
    const dones = this.dones;
    const len = this.pos;
    this.msg = null; this.pos = 0; this.count = 0; this.dones = [];
    this.expect = Math.min(len, WRITEV_FIRST_ENTRY + this.maxBytes);
    putBatchCount(whole, n);
    this.net.request(this.peer, SVC_WRITEV, whole.subarray(0, len), { ordered: this.ordered }).then(
      () => { releaseBuffer(whole); for (let i = 0; i < n; i++) dones[i]!(null); },
      (err: unknown) => {
        releaseBuffer(whole);
        const e = err ?? new Error('mirror write failed');
        for (let i = 0; i < n; i++) dones[i]!(e);
      });
  }
}

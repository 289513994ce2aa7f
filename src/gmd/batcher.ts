import { SVC_WRITEV, encodeHeader } from './protocol.js';
import type { PeerTransport } from './ports.js';

interface Entry { header: Buffer; data: Buffer; done: (ok: unknown) => void }

/**
 * Coalesces the application writes mirrored in one event-loop turn into one GeoMessage message
 * (SVC_WRITEV). At queue depth 32 with 4 KiB writes this turns 32 messages, 32 replies and their
 * acknowledgements into one message and one reply: fewer packets and less work per write on both
 * sides. Entries keep their order inside a batch and batches keep theirs on the ordered channel,
 * so async write order is preserved. A failed batch fails every write in it.
 */
export class WriteBatcher {
  private entries: Entry[] = [];
  private bytes = 0;
  private scheduled = false;

  constructor(private readonly net: PeerTransport, private readonly peer: string, private readonly ordered: boolean,
    private readonly maxBytes = 512 * 1024) {}

  /** Resolves true when the peer wrote it, or with the error. */
  write(kind: number, flags: number, offset: number, data: Buffer): Promise<unknown> {
    return new Promise((done) => {
      this.entries.push({ header: encodeHeader(kind, flags, offset, data.length), data, done });
      this.bytes += data.length + 16;
      if (this.bytes >= this.maxBytes) this.flush();
      else if (!this.scheduled) { this.scheduled = true; setImmediate(() => { this.scheduled = false; this.flush(); }); }
    });
  }

  flush(): void {
    const batch = this.entries;
    if (batch.length === 0) return;
    this.entries = [];
    this.bytes = 0;
    const count = Buffer.allocUnsafe(4);
    count.writeUInt32BE(batch.length, 0);
    const parts: Buffer[] = [count];
    for (const e of batch) parts.push(e.header, e.data);
    this.net.request(this.peer, SVC_WRITEV, parts, { ordered: this.ordered }).then(
      () => { for (const e of batch) e.done(true); },
      (err: unknown) => { for (const e of batch) e.done(err ?? new Error('mirror write failed')); });
  }
}

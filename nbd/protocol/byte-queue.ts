/**
 * A FIFO of received socket chunks. Data arrives in arbitrary pieces; the parsers need contiguous
 * views of headers and payloads. Node hands every 'data' event a fresh buffer, so a view into it
 * (subarray) stays valid: contiguous ranges are returned without copying, and only ranges that
 * straddle chunks are copied once.
 */
export class ByteQueue {
  private chunks: Buffer[] = [];
  /** Read position inside chunks[0]. */
  private head = 0;
  /** Unread bytes in total. */
  length = 0;

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.length += chunk.length;
  }

  /**
   * Makes the next `n` bytes contiguous in the first chunk (copying only if they straddle chunks)
   * and returns that chunk; the bytes start at `this.pos`. Caller guarantees `n <= length`.
   */
  contiguous(n: number): Buffer {
    const first = this.chunks[0]!;
    if (first.length - this.head >= n) return first;
    // Copy the straddling range into one buffer and put it in place of the bytes it came from.
    const merged = Buffer.allocUnsafe(n);
    let copied = 0;
    while (copied < n) {
      const c = this.chunks[0]!;
      const take = Math.min(c.length - this.head, n - copied);
      c.copy(merged, copied, this.head, this.head + take);
      copied += take;
      if (this.head + take === c.length) { this.chunks.shift(); this.head = 0; } else this.head += take;
    }
    if (this.head > 0) { this.chunks[0] = this.chunks[0]!.subarray(this.head); this.head = 0; }
    this.chunks.unshift(merged);
    return merged;
  }

  /** Offset of the next unread byte inside the buffer `contiguous` returned. */
  get pos(): number { return this.head; }

  /** Consumes `n` bytes (n <= length). */
  skip(n: number): void {
    this.length -= n;
    while (n > 0) {
      const c = this.chunks[0]!;
      const avail = c.length - this.head;
      if (avail <= n) { this.chunks.shift(); n -= avail; this.head = 0; } else { this.head += n; n = 0; }
    }
  }

  /** Removes and returns the next `n` bytes (a view when contiguous, else one copy). */
  take(n: number): Buffer {
    if (n === 0) return Buffer.alloc(0);
    const c = this.contiguous(n);
    const out = c.subarray(this.head, this.head + n);
    this.skip(n);
    return out;
  }

  /** Removes the next `n` bytes (n <= length) as views of the received chunks: never copies. */
  takeVec(n: number): Buffer[] {
    const out: Buffer[] = [];
    this.length -= n;
    while (n > 0) {
      const c = this.chunks[0]!;
      const avail = c.length - this.head;
      if (avail <= n) {
        out.push(this.head === 0 ? c : c.subarray(this.head));
        this.chunks.shift();
        this.head = 0;
        n -= avail;
      } else {
        out.push(c.subarray(this.head, this.head + n));
        this.head += n;
        n = 0;
      }
    }
    return out;
  }

  /** True when the next `n` bytes lie in one received chunk. */
  isContiguous(n: number): boolean {
    const first = this.chunks[0];
    return first !== undefined && first.length - this.head >= n;
  }

  /** Discards up to `n` bytes; returns how many were discarded. */
  discard(n: number): number {
    const d = Math.min(n, this.length);
    this.skip(d);
    return d;
  }
}

/**
 * Resource-level fencing for a cluster-managed GMD (DESIGN §9 rule 10, `[hageo] fencing =
 * "resource-only"`): the NBD backend the promoted side exports, wrapping the GeoMirrorDevice. A
 * write the peer will not have (the device marked it stale: `stats.staleMarkings` grew) is not
 * acknowledged until the cluster records the peer outdated (`record`, which refuses without
 * quorum). While the record cannot be written the replies wait (the application sees a frozen
 * device); after `fenceTimeoutMs` the waiting writes fail with EIO. Written locally but never
 * acknowledged, they cost nothing a client was promised.
 *
 * Once written, the record covers every later stale marking until the GMD is seen in sync with its
 * peer again (attached, map clean), when the agent removes it; the next stale marking records anew.
 */
import type { Backend, BackendFlags, WriteOptions, ZeroOptions } from '../../nbd/backend.js';
import { nbdError } from '../../nbd/index.js';
import type { GeoMirrorDevice } from './device/index.js';

const EIO = 5;

export interface FenceGateOptions {
  /** Records `peer` outdated in the cluster; rejects when it cannot (no quorum, no CIB). */
  record: (peer: string) => Promise<void>;
  fenceTimeoutMs: number;
  /** How long to wait between attempts while the record cannot be written. */
  retryMs?: number;
  onEvent?: (level: 'info' | 'warn' | 'error', message: string) => void;
}

export class FenceGate implements Backend {
  private readonly d: GeoMirrorDevice;
  private readonly o: FenceGateOptions;
  /** Stale markings already covered by a record (or present before this gate existed). */
  private coveredMarkings: number;
  /** A record was written and the GMD has not been in sync since. */
  private recorded = false;
  private attempt: Promise<void> | null = null;
  /** Writes whose acknowledgement waited for a record (tests and status). */
  held = 0;
  failed = 0;

  constructor(d: GeoMirrorDevice, o: FenceGateOptions) {
    this.d = d;
    this.o = o;
    this.coveredMarkings = d.stats.staleMarkings;
  }

  size(): number { return this.d.size(); }
  flags(): BackendFlags { return this.d.flags(); }
  blockSizes(): { minimum: number; preferred: number; maximum: number } { return this.d.blockSizes(); }
  read(offset: number, length: number): Promise<Buffer> { return this.d.read(offset, length); }
  flush(): Promise<void> { return this.d.flush().then(() => this.gate()); }
  write(offset: number, data: Buffer, opts: WriteOptions): Promise<void> { return this.d.write(offset, data, opts).then(() => this.gate()); }
  trim(offset: number, length: number, opts: WriteOptions): Promise<void> { return this.d.trim(offset, length, opts).then(() => this.gate()); }
  zero(offset: number, length: number, opts: ZeroOptions): Promise<void> { return this.d.zero(offset, length, opts).then(() => this.gate()); }
  writeCb(offset: number, data: Buffer, fua: boolean, cb: (err: Error | null) => void): void {
    this.d.writeCb(offset, data, fua, (err) => {
      if (err || !this.mustRecord()) { cb(err); return; }
      this.gate().then(() => cb(null), (e: Error) => cb(e));
    });
  }
  async close(): Promise<void> { /* the device's lifetime is the runner's */ }

  /** True when a write done now may not be acknowledged before a record exists. */
  private mustRecord(): boolean {
    const d = this.d;
    if (this.recorded && d.peer !== null && d.map?.isClean()) this.recorded = false;
    const markings = d.stats.staleMarkings;
    if (markings === this.coveredMarkings) return false;
    if (this.recorded) { this.coveredMarkings = markings; return false; }
    return true;
  }

  /** Resolves once the peers that lack writes are recorded outdated; rejects with EIO after the timeout. */
  private gate(): Promise<void> {
    if (!this.mustRecord()) return Promise.resolve();
    this.held++;
    this.attempt ??= this.recordAll().finally(() => { this.attempt = null; });
    return this.attempt.catch((e: Error) => {
      this.failed++;
      throw nbdError(EIO, `write not acknowledged: ${e.message}`);
    });
  }

  private async recordAll(): Promise<void> {
    const d = this.d;
    const markings = d.stats.staleMarkings;
    const deadline = Date.now() + this.o.fenceTimeoutMs;
    let lastError = '';
    for (;;) {
      const outdated = d.peers.filter((p) => p !== d.peer);
      try {
        for (const p of outdated) await this.o.record(p);
        this.recorded = true;
        this.coveredMarkings = Math.max(this.coveredMarkings, markings);
        this.o.onEvent?.('warn', `peer(s) ${outdated.join(', ') || '(none)'} recorded outdated in the cluster before acknowledging writes they lack`);
        return;
      } catch (e) {
        lastError = (e as Error).message;
        if (Date.now() + (this.o.retryMs ?? 500) > deadline) break;
        await new Promise((r) => setTimeout(r, this.o.retryMs ?? 500));
      }
    }
    this.o.onEvent?.('error', `could not record the peer outdated within ${this.o.fenceTimeoutMs / 1000} s (${lastError}): the writes it lacks fail with EIO`);
    throw new Error(`the peer could not be recorded outdated in the cluster within ${this.o.fenceTimeoutMs / 1000} s (${lastError})`);
  }
}

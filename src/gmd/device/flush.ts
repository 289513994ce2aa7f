/**
 * FLUSH on a GMD, and the clean gate's own flush: both volumes made durable, the peer's through
 * SVC_FLUSH. Regions written on both sides are cleaned only once a flush has reached both (clean-gate.ts).
 */

import type { CleanGate } from '../clean-gate.js';
import { SVC_FLUSH } from '../protocol.js';
import type { DeviceContext } from './context.js';
import type { PeerMembership } from './membership.js';
import type { GmdResources } from './types.js';

const EMPTY = Buffer.alloc(0);

export class Flusher {
  constructor(private readonly ctx: DeviceContext, private readonly gate: CleanGate, private readonly membership: PeerMembership) {}

  /** The application's flush. */
  async flush(): Promise<void> {
    const res = this.ctx.admit();
    try {
      const peer = this.ctx.activePeer;
      // Writes completed before this flush are durable on both volumes once it has reached both.
      const mark = this.gate.mark();
      const remote = peer ? this.flushPeer(peer, res) : Promise.resolve(false);
      await res.local.flush();
      // async: the application does not wait for the peer (it may lag); the gate still may.
      if (res.attrs.mode !== 'async') { if (await remote) this.gate.covered(mark); }
      else void remote.then((ok) => { if (ok) this.gate.covered(mark); });
    } finally { this.ctx.done(); }
  }

  /** The clean gate's flush: both volumes, or false when there is no peer to confirm. */
  async flushBoth(): Promise<boolean> {
    const res = this.ctx.res;
    const peer = this.ctx.activePeer;
    if (!res || !peer) return false;
    const remote = this.flushPeer(peer, res);
    await res.local.flush();
    return remote;
  }

  /** SVC_FLUSH to the peer: true once its volume is durable; false (and the peer dropped) on failure. */
  private flushPeer(peer: string, res: GmdResources): Promise<boolean> {
    return this.ctx.net.request(peer, SVC_FLUSH, EMPTY, { ordered: res.attrs.mode === 'async' })
      .then(() => true, (e: unknown) => { this.membership.peerFailed(peer, e); return false; });
  }
}

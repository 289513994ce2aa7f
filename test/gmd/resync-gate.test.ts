/**
 * Resync against the clean gate (clean-gate.ts). A write mirrored to both sides leaves its region
 * marked (in flight) until a flush of both volumes; the resync must not take that mark for "the
 * peer lacks this region". It did: it copied such a region, could not clean it (the gate holds it),
 * and copied it again on every pass until the gate's next flush — up to 30 s of needless traffic,
 * and never finishing under steady writes without flushes. Found as the intermittent
 * resyncBytesSent mismatch in join-window.test.ts, where under load an application write landed
 * between two resync passes.
 *
 * The ordering is forced here: the primary (alpha) runs in this process over real GeoMessage and
 * real files, with one step added in front of its transport — the resync's flush on the peer is
 * held until the test has written (without a flush) while the resync is between passes. The
 * secondary (beta) is the real `georm gmd run` process.
 */
import t from 'tap';
import { TestCluster, identical, inProcessGmd, ForwardingTransport, Latch, type InProcessGmd } from './cluster.js';
import { missingTools } from '../helpers/env.js';
import { SVC_FLUSH } from '../../src/gmd/protocol.js';
import type { NetPayload } from '../../src/gmd/ports.js';

const SIZE = 4 * 1024 * 1024;
const REGION = 32768;
const K = 1024;

/** alpha's real GeoMessage; once armed, the next SVC_FLUSH it sends waits for release(). */
class FlushHold extends ForwardingTransport {
  private armed = false;
  /** Opened when the armed flush is being held. */
  readonly held = new Latch();
  private readonly released = new Latch();

  arm(): void { this.armed = true; }
  release(): void { this.released.open(); }

  override request(peer: string, service: number, payload: NetPayload, opts?: { ordered?: boolean; timeoutMs?: number }): Promise<Buffer> {
    if (service !== SVC_FLUSH || !this.armed) return this.net.request(peer, service, payload, opts);
    this.armed = false;
    this.held.open();
    return this.released.opened.then(() => this.net.request(peer, service, payload, opts));
  }
}

t.test('resync copies only stale regions: a mirrored write waiting for the clean gate is neither copied nor holds the resync open', { skip: missingTools('cmp') }, async (t) => {
  const c = await TestCluster.create({ mode: 'mwc', size: SIZE });
  let hold: FlushHold | null = null;
  let a: InProcessGmd | null = null;
  t.teardown(async () => { hold?.release(); await a?.close(); await c.cleanup(); });
  await c.run('beta');
  a = await inProcessGmd(c, 'alpha', (geo) => (hold = new FlushHold(geo)));
  const alpha = a.dev;
  const h = hold!;
  await alpha.configure();
  await alpha.down('beta');
  await alpha.start();
  // Two regions written while alone: stale, the resync's whole job.
  await alpha.write(1024 * K, Buffer.alloc(64 * K, 0x5c), { fua: false });
  t.equal(alpha.status().map?.stale, 2, 'alpha: 2 stale regions before beta joins');

  h.arm();
  await c.start('beta');
  await h.held.opened;
  // The first pass copied the 2 regions and now waits for beta's flush before cleaning them.
  t.equal(alpha.status().stats.resyncBytesSent, 2 * REGION, 'first pass: the 2 stale regions copied');
  // Mirrored to beta, no flush: region 0 stays marked until the clean gate's flush (30 s) or the application's.
  await alpha.write(0, Buffer.alloc(4 * K, 0xa1), { fua: false });
  t.equal(alpha.status().map?.inconsistent, 1, 'region 0 (mirrored, not yet flushed) waits for the clean gate');
  h.release();

  // Bounded: before the fix the resync copied region 0 again on every pass until the gate flushed.
  const deadline = Date.now() + 5000;
  while (!alpha.status().resync?.complete && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  const s = alpha.status();
  t.ok(s.resync?.complete, `resync complete while region 0 still waits for the gate: ${JSON.stringify(s.resync)}`);
  t.equal(s.stats.resyncBytesSent, 2 * REGION, `only the 2 stale regions travelled (resyncBytesSent ${s.stats.resyncBytesSent})`);
  t.equal(s.map?.stale, 0, 'no stale region left');
  t.equal(s.map?.inconsistent, 1, 'region 0 still waits for the gate (not cleaned by the resync)');
  t.equal(s.stats.remoteFailures, 0, 'no remote failure');
  await alpha.flush();
  t.equal(alpha.status().map?.inconsistent, 0, 'the application flush releases region 0');

  await alpha.stop('test end');
  await c.ctl('beta', 'stop');
  const same = await identical(c.vol.alpha!, c.vol.beta!);
  t.ok(same.same, `volumes byte-identical after stop ${same.detail}`);
});

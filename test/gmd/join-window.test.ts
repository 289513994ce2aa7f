/**
 * The join window (commit e7af9b6). A secondary that starts while the primary is AVAILABLE sends
 * `join`; the primary attaches it and mirrors to it at once, so the primary's application writes
 * (and its resync) can reach the secondary before the join reply does. In that window the
 * secondary is AVAILABLE with `joiningPeer` set and `activePeer` still null; if it refuses those
 * writes, the primary drops it (remote failure, stale marking, a needless resync later) while the
 * secondary goes on believing it mirrors.
 *
 * On a real network the reply usually wins the race, so these tests force the ordering:
 *  1. real primary process (`georm gmd run`), secondary = the real GeoMirrorDevice in this process
 *     over real GeoMessage (loopback UDP) and real files, whose transport holds back the reply to
 *     its `join` until the test releases it; application writes come from qemu-io over NBD;
 *  2. real secondary process, primary played over real GeoMessage with the cluster key: it answers
 *     the secondary's `join` only after mirroring a single SVC_WRITE (KIND_APP), an SVC_WRITEV batch
 *     and an SVC_ZERO. The real primary sends every application write as SVC_WRITEV (WriteBatcher),
 *     so this is the only way to reach the single-write path of the fix.
 */
import t from 'tap';
import { open } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { TestCluster, identical, sha256File, inProcessGmd, ForwardingTransport, Latch } from './cluster.js';
import { runCmd } from '../helpers/proc.js';
import { missingTools } from '../helpers/env.js';
import { loadConfig, findGmd, endpointsOf } from '../../src/gmd/cluster-config.js';
import { openGeoMessage, loadClusterKey } from '../../src/geomessage/index.js';
import type { NetHandler, NetPayload } from '../../src/gmd/ports.js';
import { SVC_WRITE, SVC_WRITEV, SVC_ZERO, SVC_CONTROL, KIND_APP, encodeHeader, type PeerInfo } from '../../src/gmd/protocol.js';
import { silentLogger } from '../../src/util/log.js';

const qio = (uri: string, ...cmds: string[]) => runCmd('qemu-io', ['-f', 'raw', ...cmds.flatMap((c) => ['-c', c]), uri], { timeoutMs: 30000 });
const SIZE = 4 * 1024 * 1024;
const REGION = 32768;
const K = 1024;

/** One data message the secondary's device handled, and what it answered. */
interface Seen { service: number; kind: number; entries: number; inWindow: boolean; outcome: string }

/**
 * The secondary's real GeoMessage with one delay added: the reply to its `join` request reaches the
 * device only after `release()`. It also records the data messages the device handled and whether
 * each was accepted (handlers are called synchronously, so the device's in-order locking is kept).
 */
class JoinReplyGate extends ForwardingTransport {
  readonly seen: Seen[] = [];
  private held = true;
  /** Opened once the real join reply has arrived (and is being held). */
  readonly arrived = new Latch();
  private readonly released = new Latch();

  get holding(): boolean { return this.held; }
  release(): void { this.held = false; this.released.open(); }

  override request(peer: string, service: number, payload: NetPayload, opts?: { ordered?: boolean; timeoutMs?: number }): Promise<Buffer> {
    const p = this.net.request(peer, service, payload, opts);
    if (service !== SVC_CONTROL || !Buffer.isBuffer(payload) || (JSON.parse(payload.toString('utf8')) as { op?: string }).op !== 'join') return p;
    return p.then(async (reply) => { this.arrived.open(); await this.released.opened; return reply; });
  }

  override handle(service: number, handler: NetHandler): void {
    if (service !== SVC_WRITE && service !== SVC_WRITEV && service !== SVC_ZERO) { this.net.handle(service, handler); return; }
    this.net.handle(service, (m) => {
      const s: Seen = { service, kind: m.payload[0] ?? -1, entries: service === SVC_WRITEV && m.payload.length >= 4 ? m.payload.readUInt32BE(0) : 1, inWindow: this.held, outcome: 'pending' };
      this.seen.push(s);
      let r: ReturnType<NetHandler>;
      try { r = handler(m); } catch (e) { s.outcome = `refused: ${(e as Error).message}`; throw e; }
      return Promise.resolve(r).then((v) => { s.outcome = 'accepted'; return v; },
        (e: unknown) => { s.outcome = `refused: ${(e as Error).message}`; throw e; });
    });
  }
}

/** Bytes of `path` at [offset, offset + length). */
async function bytesAt(path: string, offset: number, length: number): Promise<Buffer> {
  const fh = await open(path, 'r');
  try { const b = Buffer.alloc(length); await fh.read(b, 0, length, offset); return b; } finally { await fh.close(); }
}

const filled = (byte: number, n: number) => Buffer.alloc(n, byte);
const names = (seen: Seen[]) => seen.map((s) => `${s.service === SVC_WRITEV ? `WRITEV×${s.entries}` : s.service === SVC_ZERO ? 'ZERO' : s.kind === KIND_APP ? 'WRITE app' : 'WRITE resync'}${s.inWindow ? ' (window)' : ''}: ${s.outcome}`).join('; ');

t.test('real primary: its writes reach the secondary before the join reply and are accepted; nobody is dropped', { skip: missingTools('qemu-io', 'cmp') }, async (t) => {
  const c = await TestCluster.create({ mode: 'mwc', size: SIZE });
  let stopBeta = async (): Promise<void> => undefined;
  t.teardown(async () => { await stopBeta(); await c.cleanup(); });
  await c.run('alpha');
  await c.start('alpha', ['beta']);
  // Two regions written while alone: they are stale and must be resynchronised (and nothing else).
  t.equal((await qio(c.uri, 'write -P 0x5c 1M 64K')).code, 0, 'write while alone');
  const s0 = await c.status('alpha');
  t.equal(s0.map?.stale, 2, 'alpha: 2 stale regions before the join');

  // beta: the real device, real volume and state map files, real GeoMessage; only the join reply is held.
  let gate!: JoinReplyGate;
  const b = await inProcessGmd(c, 'beta', (geo) => (gate = new JoinReplyGate(geo)));
  const beta = b.dev;
  stopBeta = async () => { gate.release(); await b.close(); };
  await beta.configure();

  const starting = beta.start().then((r) => r, (e: unknown) => e as Error);
  // A start that ends before the reply arrives failed (refused or unreachable): stop here, not at tap's timeout.
  const early = await Promise.race([gate.arrived.opened.then(() => null), starting]);
  if (early) throw new Error(`beta's start ended before the join reply arrived: ${early.message}`);
  // The window: alpha has accepted the join (and mirrors to beta); beta has not seen the reply.
  const w0 = await c.status('alpha');
  t.ok(w0.peers[0]!.active, 'alpha accepted the join and mirrors to beta');
  t.equal(beta.state, 'AVAILABLE', 'beta AVAILABLE');
  t.equal(beta.peer, null, 'beta has not processed the join reply (no active peer yet)');

  // Application writes on alpha inside the window: a single one, a burst (queued together, so
  // batched into SVC_WRITEV messages), and a write-zeroes (SVC_ZERO).
  t.equal((await qio(c.uri, 'write -P 0xa1 0 4K')).code, 0, 'single write');
  const burst = Array.from({ length: 8 }, (_, i) => `aio_write -P 0x${(0xb0 + i).toString(16)} ${64 * K + i * 4 * K} 4K`);
  t.equal((await qio(c.uri, ...burst, 'aio_flush')).code, 0, 'burst of 8 queued writes');
  t.equal((await qio(c.uri, 'write -P 0xc4 3M 64K', 'write -z 3120K 16K')).code, 0, 'write and write-zeroes');
  t.ok(gate.holding && beta.peer === null, 'still inside the window after the writes');

  const inWindow = gate.seen.filter((s) => s.inWindow);
  t.comment(`messages beta handled in the window: ${names(inWindow)}`);
  const appWrites = inWindow.filter((s) => s.service === SVC_WRITEV);
  t.ok(appWrites.length > 0, 'mirrored writes (SVC_WRITEV) reached beta before the join reply');
  t.ok(inWindow.some((s) => s.service === SVC_ZERO), 'the write-zeroes reached beta before the join reply');
  t.equal(appWrites.reduce((n, s) => n + s.entries, 0), 1 + 8 + 1, 'every application write was mirrored in the window');
  t.same(inWindow.filter((s) => s.outcome !== 'accepted').map((s) => s.outcome), [], 'beta accepted every write in the window');

  const w1 = await c.status('alpha');
  t.ok(w1.peers[0]!.active, 'alpha did not drop beta');
  t.equal(w1.stats.remoteFailures, s0.stats.remoteFailures, 'no remote write failed');
  t.equal(w1.stats.staleMarkings, s0.stats.staleMarkings, 'no write was marked stale (local-only) in the window');
  t.notMatch(w1.events.map((e) => e.message).join('\n'), /mirroring to beta stopped/, 'no "mirroring stopped" event');
  t.ok((await bytesAt(c.vol.beta!, 0, 4 * K)).equals(filled(0xa1, 4 * K)), 'beta volume holds the single write already');
  t.ok((await bytesAt(c.vol.beta!, 64 * K + 28 * K, 4 * K)).equals(filled(0xb7, 4 * K)), 'beta volume holds the last write of the burst already');
  t.ok((await bytesAt(c.vol.beta!, 3120 * K, 16 * K)).equals(filled(0, 16 * K)), 'beta volume holds the zeroes already');
  t.ok((await bytesAt(c.vol.beta!, 3072 * K, 48 * K)).equals(filled(0xc4, 48 * K)), 'beta volume holds the write before the zeroes already');

  gate.release();
  const started = await starting;
  if (started instanceof Error) throw started;
  t.match(started.message, /mirroring to alpha/, 'beta start completes once the reply is delivered');
  t.equal(beta.peer, 'alpha', 'beta mirrors with alpha');

  t.equal((await qio(c.uri, 'write -P 0xd5 2M 4K')).code, 0, 'write after the window');
  const done = await c.waitFor('alpha', (s) => s.peers[0]!.active && s.map?.stale === 0 && s.map.inconsistent === 0 && !!s.resync?.complete, 'in sync', 15000);
  t.equal(done.stats.resyncBytesSent, 2 * REGION, `only the 2 regions stale before the join were resynchronised (sent ${done.stats.resyncBytesSent} bytes)`);
  t.equal(done.stats.staleMarkings, s0.stats.staleMarkings, 'no stale marking since the join');
  t.equal(done.stats.remoteFailures, s0.stats.remoteFailures, 'no remote failure since the join');
  t.equal(beta.status().map?.stale, 0, 'beta map has no stale region');
  t.same(gate.seen.filter((s) => s.outcome !== 'accepted').map((s) => s.outcome), [], 'beta accepted every data message');

  await c.ctl('alpha', 'stop');
  await beta.stop('test end');
  const same = await identical(c.vol.alpha!, c.vol.beta!);
  t.ok(same.same, `volumes byte-identical after stop ${same.detail}`);
});

t.test('real secondary: single, batched and zero writes from the primary it is joining are accepted before the join reply', { skip: missingTools('cmp') }, async (t) => {
  const c = await TestCluster.create({ mode: 'mwc', size: SIZE });
  t.teardown(() => c.cleanup());
  const cfg = await loadConfig(c.cfgPath);
  const minor = findGmd(cfg, c.gmd).minor;
  // alpha played with the real cluster key and alpha's endpoints (alpha's own process is not running).
  const net = await openGeoMessage({
    machine: 'alpha', key: await loadClusterKey(cfg.cluster.keyFile), endpoints: endpointsOf(cfg, 'alpha', minor), logger: silentLogger,
    peers: [{ machine: 'beta', endpoints: endpointsOf(cfg, 'beta', minor), promoteFailureTimeoutMs: 0 }],
  });
  t.teardown(() => net.close());
  const info = (): PeerInfo => ({
    machine: 'alpha', gmd: c.gmd, minor, size: SIZE, mode: 'mwc', role: 'primary', state: 'AVAILABLE',
    mapDirty: false, activePeers: [], regionSize: REGION, configDigest: '',
  });
  // What alpha's volume would hold: the test's expectation of beta's volume.
  const image = Buffer.alloc(SIZE);
  const results: string[] = [];
  const mirror = async (what: string, service: number, payload: Buffer[]): Promise<void> => {
    results.push(await net.request('beta', service, payload, { timeoutMs: 5000 }).then(() => `${what}: accepted`, (e: unknown) => `${what}: refused (${(e as Error).message})`));
  };
  let joinSeen = false;
  net.handle(SVC_CONTROL, async (m) => {
    const msg = JSON.parse(m.payload.toString('utf8')) as { op: string };
    if (msg.op === 'join') {
      joinSeen = true;
      // Mirror before answering: beta sees these writes before the join reply, deterministically.
      const single = filled(0xa1, 4 * K);
      single.copy(image, 0);
      await mirror('SVC_WRITE KIND_APP', SVC_WRITE, [encodeHeader(KIND_APP, 0, 0, single.length), single]);
      const entries: Array<[number, Buffer]> = [[64 * K, filled(0xb1, 4 * K)], [68 * K, filled(0xb2, 8 * K)], [1024 * K + 512, filled(0xb3, 512)]];
      const count = Buffer.alloc(4);
      count.writeUInt32BE(entries.length);
      for (const [off, d] of entries) d.copy(image, off);
      await mirror('SVC_WRITEV ×3', SVC_WRITEV, [count, ...entries.flatMap(([off, d]) => [encodeHeader(KIND_APP, 0, off, d.length), d])]);
      filled(0xc4, 64 * K).copy(image, 3 * 1024 * K);
      await mirror('SVC_WRITE KIND_APP 64K', SVC_WRITE, [encodeHeader(KIND_APP, 0, 3 * 1024 * K, 64 * K), filled(0xc4, 64 * K)]);
      image.fill(0, 3 * 1024 * K + 16 * K, 3 * 1024 * K + 32 * K);
      await mirror('SVC_ZERO', SVC_ZERO, [encodeHeader(KIND_APP, 0, 3 * 1024 * K + 16 * K, 16 * K)]);
    }
    return Buffer.from(JSON.stringify(msg.op === 'leave' ? { ok: true } : info()));
  });

  await c.run('beta');
  const r = await c.start('beta') as { message: string };
  t.ok(joinSeen, 'beta joined alpha');
  t.comment(results.join('; '));
  t.same(results.filter((x) => !x.endsWith('accepted')), [], 'beta accepted every write sent before the join reply');
  t.equal(results.length, 4, 'four messages mirrored in the window');
  t.match(r.message, /mirroring to alpha/, 'beta start completed');
  const st = await c.status('beta');
  t.equal(st.state, 'AVAILABLE', 'beta AVAILABLE');
  t.ok(st.peers[0]!.active, 'beta mirrors with alpha');
  t.equal(st.stats.incomingWrites, 1 + 3 + 1, 'beta counted 5 incoming application writes');
  t.equal(st.map?.stale, 0, 'beta map: no stale region');
  await c.terminate('beta');
  const want = createHash('sha256').update(image).digest('hex');
  t.equal(await sha256File(c.vol.beta!), want, 'beta volume is byte-identical to what the primary wrote');
});

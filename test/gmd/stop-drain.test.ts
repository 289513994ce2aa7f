/**
 * stop() on a GMD that applies its peer's writes (a secondary): the writes and zeros it admitted
 * finish before it is STOPPED (so unconfigure never closes the volume under them), and what the
 * peer sends once the stop began is refused, which makes the peer mark those regions stale.
 *
 * The device is the real GeoMirrorDevice on a real volume file and state map; the peer is played
 * by the test through the device's own handlers (a PeerTransport that records them), and the
 * volume's writes wait at a latch so the test decides when they finish.
 */
import t from 'tap';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { GeoMirrorDevice, type GmdResources } from '../../src/gmd/device/index.js';
import type { NetHandler, NetMessage, NetPayload, PeerTransport } from '../../src/gmd/ports.js';
import { SVC_CONTROL, SVC_FLUSH, SVC_WRITE, SVC_WRITEV, SVC_ZERO, KIND_APP, encodeHeader, type PeerInfo } from '../../src/gmd/protocol.js';
import { StateMap } from '../../src/statemap/index.js';
import { FileBackend, type Backend } from '../../nbd/index.js';
import { silentLogger } from '../../src/util/log.js';
import { tempDir } from '../helpers/env.js';
import { Latch } from './cluster.js';

const SIZE = 1024 * 1024;
const REGION = 32768;
const K = 1024;

/** The primary, as the device sees it through its transport: answers control requests, records handlers. */
class PlayedPrimary implements PeerTransport {
  readonly handlers = new Map<number, NetHandler>();
  readonly info: PeerInfo = {
    machine: 'alpha', gmd: 'g', minor: 1, size: SIZE, mode: 'mwc', role: 'primary', state: 'AVAILABLE',
    mapDirty: false, activePeers: [], regionSize: REGION, configDigest: '',
  };
  async request(_peer: string, service: number, payload: NetPayload): Promise<Buffer> {
    if (service !== SVC_CONTROL) return Buffer.alloc(0);
    const op = (JSON.parse((payload as Buffer).toString('utf8')) as { op: string }).op;
    return Buffer.from(JSON.stringify(op === 'hello' || op === 'join' ? this.info : { ok: true }));
  }
  handle(service: number, handler: NetHandler): void { this.handlers.set(service, handler); }
  peerState(): 'up' { return 'up'; }
  declareDown(): void { /* not used here */ }
  on(): unknown { return this; }

  /** Sends one message to the device, as GeoMessage would deliver it. */
  send(service: number, ...parts: Buffer[]): Promise<string> {
    const m: NetMessage = { peer: 'alpha', service, payload: Buffer.concat(parts), ordered: false };
    return Promise.resolve().then(() => this.handlers.get(service)!(m)).then(() => 'ok', (e: unknown) => `refused: ${(e as Error).message}`);
  }
}

/** The volume, with writes and zeros that start at once but finish only once `gate` opened. */
function heldVolume(local: FileBackend, gate: Latch, started: { n: number }): Backend {
  return {
    size: () => local.size(),
    flags: () => local.flags(),
    read: (offset, length) => local.read(offset, length),
    write: async (offset, data, opts) => { started.n++; await gate.opened; return local.write(offset, data, opts); },
    zero: async (offset, length, opts) => { started.n++; await gate.opened; return local.zero(offset, length, opts); },
    trim: (offset, length, opts) => local.trim(offset, length, opts),
    flush: () => local.flush(),
    close: () => local.close(),
  };
}

t.test('a secondary\'s stop waits for the peer writes it admitted and refuses later ones; the volume closes after them', async (t) => {
  const { dir, cleanup } = tempDir();
  t.teardown(cleanup);
  const volume = join(dir, 'volume');
  writeFileSync(volume, Buffer.alloc(SIZE, 0x11));
  const gate = new Latch();
  const started = { n: 0 };
  const net = new PlayedPrimary();
  const dev = new GeoMirrorDevice({
    name: 'g', minor: 1, machine: 'beta', peers: ['alpha'], net, logger: silentLogger,
    open: async (): Promise<GmdResources> => {
      const local = await FileBackend.open(volume, { readOnly: false, extensions: {} });
      const map = await StateMap.create(join(dir, 'map'), { gmdName: 'g', minor: 1, deviceSize: SIZE, regionSize: REGION });
      return { local: heldVolume(local, gate, started), map, attrs: { mode: 'mwc', role: 'secondary', regionSize: REGION, syncRate: 256 * K, hwm: 0, resyncRateLimit: 0 } };
    },
  });
  t.match((await dev.start()).message, /mirroring to alpha/);

  const count = Buffer.alloc(4);
  count.writeUInt32BE(2);
  const admitted = [
    net.send(SVC_WRITE, encodeHeader(KIND_APP, 0, 0, 4 * K), Buffer.alloc(4 * K, 0xa1)),
    net.send(SVC_WRITEV, count, encodeHeader(KIND_APP, 0, 64 * K, 4 * K), Buffer.alloc(4 * K, 0xb1), encodeHeader(KIND_APP, 0, 128 * K, 8 * K), Buffer.alloc(8 * K, 0xb2)),
    net.send(SVC_ZERO, encodeHeader(KIND_APP, 0, 256 * K, 16 * K)),
  ];
  while (started.n < 4) await new Promise((r) => setImmediate(r));

  let stopped = false;
  const stopping = dev.stop('test').then(() => { stopped = true; });
  const again = dev.stop('a second stopgmd');
  const late = [
    net.send(SVC_WRITE, encodeHeader(KIND_APP, 0, 512 * K, 4 * K), Buffer.alloc(4 * K, 0xee)),
    net.send(SVC_WRITEV, count, encodeHeader(KIND_APP, 0, 520 * K, 4 * K), Buffer.alloc(4 * K, 0xee), encodeHeader(KIND_APP, 0, 600 * K, 4 * K), Buffer.alloc(4 * K, 0xee)),
    net.send(SVC_ZERO, encodeHeader(KIND_APP, 0, 700 * K, 4 * K)),
  ];

  await new Promise((r) => setTimeout(r, 50));
  t.equal(stopped, false, 'stop() waits while admitted peer writes are still running');
  t.equal(dev.state, 'AVAILABLE', 'not STOPPED yet');
  t.equal(started.n, 4, 'nothing sent after the stop began reached the volume');
  gate.open();
  t.same(await Promise.all(admitted), ['ok', 'ok', 'ok'], 'every admitted write and zero was applied and acknowledged');
  const refused = await Promise.all(late);
  t.same(refused.map((r) => r.replace(/: .*/, '')), ['refused', 'refused', 'refused'], 'writes and zeros sent after the stop began are refused');
  t.match(refused[0], /g on beta is stopping/, 'with the reason');
  await stopping;
  await again;
  t.equal(dev.state, 'STOPPED', 'STOPPED once they were done');
  await dev.unconfigure();
  t.match(await net.send(SVC_FLUSH), /^refused: .*DEFINED/, 'a flush without an open volume fails rather than confirming data it cannot flush');

  const v = readFileSync(volume);
  t.ok(v.subarray(0, 4 * K).every((x) => x === 0xa1), 'the single write is on the volume');
  t.ok(v.subarray(64 * K, 68 * K).every((x) => x === 0xb1) && v.subarray(128 * K, 136 * K).every((x) => x === 0xb2), 'the batch is on the volume');
  t.ok(v.subarray(256 * K, 272 * K).every((x) => x === 0), 'the zero is on the volume');
  t.ok(v.subarray(512 * K).subarray(0, 256 * K).every((x) => x === 0x11), 'nothing refused reached the volume');
});

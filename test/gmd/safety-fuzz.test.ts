/**
 * DESIGN §4 rule 9 for the GMD's own inputs: the control socket (NDJSON), the CLI's arguments and
 * the GeoMessage service handlers (authenticated with the real cluster key, malformed payloads).
 * Bad input gets an error answer; the daemon keeps running; no volume or state map byte changes.
 */
import t, { type Test } from 'tap';
import { createConnection } from 'node:net';
import { TestCluster, sha256File } from './cluster.js';
import { runCmd } from '../helpers/proc.js';
import { missingTools } from '../helpers/env.js';
import { loadConfig, endpointsOf } from '../../src/gmd/cluster-config.js';
import { openGeoMessage, loadClusterKey } from '../../src/geomessage/index.js';
import { SVC_WRITE, SVC_WRITEV, SVC_READ, SVC_FLUSH, SVC_ZERO, SVC_CONTROL, encodeHeader, KIND_APP, KIND_RESYNC } from '../../src/gmd/protocol.js';

const qio = (uri: string, ...cmds: string[]) => runCmd('qemu-io', ['-f', 'raw', ...cmds.flatMap((c) => ['-c', c]), uri], { timeoutMs: 30000 });
const SIZE = 4 * 1024 * 1024;

/** Sends raw bytes on a fresh control connection; returns the answer lines (until close or `expect` lines). */
function rawControl(path: string, data: string | Buffer, expect: number): Promise<string[]> {
  return new Promise((resolve) => {
    const sock = createConnection(path);
    let buf = '';
    const finish = () => { clearTimeout(timer); sock.destroy(); resolve(buf.split('\n').filter(Boolean)); };
    const timer = setTimeout(finish, 10000);
    sock.on('error', finish);
    sock.on('close', finish);
    sock.on('data', (d: Buffer) => { buf += d.toString('utf8'); if (buf.split('\n').filter(Boolean).length >= expect) finish(); });
    sock.on('connect', () => sock.write(data, () => undefined));
  });
}

/** A running alpha (primary, AVAILABLE alone with gmddown beta) holding data and stale regions. */
async function aloneWithData(t: Test): Promise<{ c: TestCluster; sums: () => Promise<string[]>; before: string[] }> {
  const c = await TestCluster.create({ mode: 'mwc', size: SIZE });
  t.teardown(() => c.cleanup());
  await c.run('alpha');
  await c.start('alpha', ['beta']);
  t.equal((await qio(c.uri, 'write -P 0x5c 0 1M', 'write -P 0x7d 3M 64K')).code, 0);
  await c.ctl('alpha', 'stop');
  await c.start('alpha', ['beta']);
  const sums = async () => [await sha256File(c.vol.alpha!), String((await c.status('alpha')).map?.stale)];
  return { c, sums, before: await sums() };
}

t.test('control socket: malformed NDJSON, unknown ops, bad arguments, huge lines', { skip: missingTools('qemu-io') }, async (t) => {
  const { c, sums, before } = await aloneWithData(t);
  const sock = c.sock.alpha!;
  const st0 = await c.status('alpha');
  const bad = ['{', 'null', '[]', '"status"', '42', '{"op":5}', '{"id":1}', '{"op":"nope"}', '{"op":"__proto__"}', '{"op":"constructor"}',
    '{"op":"toString","args":[]}', '\u0000\u00ff garbage', '{"op":"status","args":"x"}'];
  const answers = await rawControl(sock, bad.join('\n') + '\n', bad.length - 0);
  const statusLine = answers.find((l) => (JSON.parse(l) as { ok: boolean }).ok);
  t.equal(answers.length, bad.length, 'one answer per line');
  t.equal(answers.filter((l) => !(JSON.parse(l) as { ok: boolean }).ok).length, bad.length - 1, `every malformed line answered with an error (${answers.filter((l) => !l.includes('"ok":true')).map((l) => (JSON.parse(l) as { error: { code: string } }).error.code).join(',')})`);
  t.ok(statusLine, 'status with non-object args still answers');

  // Every operation with arguments of the wrong shape: an error or a harmless answer, never a crash.
  const ops: Array<[string, unknown]> = [
    ['start', { down: 'beta' }], ['start', { down: [null, 5, {}] }], ['down', { peer: { x: 1 } }], ['down', {}], ['down', { peer: 'alpha' }],
    ['unify', { master: ['alpha'] }], ['unify', { master: 'nosuch', preview: true }], ['unify', {}],
    ['takeover', {}], ['takeover', { map: 42 }], ['takeover', { map: c.map.alpha }], ['takeover', { map: c.vol.alpha }], ['takeover', { map: '/nonexistent/x.map' }],
    ['set', { mode: 'bogus' }], ['set', { regionSize: -1 }], ['set', null], ['dirty', { force: true }], ['clean', {}], ['unconfigure', {}],
    ['cells', { peers: 'yes' }], ['configure', []],
  ];
  for (const [op, args] of ops) {
    const line = JSON.stringify({ id: 7, op, args }) + '\n';
    const [a] = await rawControl(sock, line, 1);
    t.ok(a, `${op} ${JSON.stringify(args)} answered: ${a?.slice(0, 160)}`);
  }
  // Attribute changes (DEFINED only) are checked too: a bad mode or a region size that differs from
  // the state map's would be taken at the next configure.
  await c.ctl('alpha', 'stop');
  await c.ctl('alpha', 'unconfigure');
  for (const args of [{ mode: 'bogus' }, { role: 'boss' }, { regionSize: 4096 }, { syncRate: -1 }, { hwm: 'lots' }, { foo: 1 }]) {
    await t.rejects(c.ctl('alpha', 'set', args), { code: 'GMD_ERR_BAD_REQUEST' }, `set ${JSON.stringify(args)} refused`);
  }
  await c.ctl('alpha', 'configure');
  t.same((await c.status('alpha')).attrs, st0.attrs, 'attributes unchanged by refused sets');
  await c.start('alpha', ['beta']);
  // A line beyond the 1 MiB limit: that connection is closed; the daemon goes on.
  const huge = await rawControl(sock, '{"op":"status","args":{"x":"' + 'A'.repeat(2 * 1024 * 1024) + '"}}\n', 1);
  t.same(huge, [], 'huge line: connection closed without an answer');
  const st = await c.status('alpha');
  t.equal(st.state, 'AVAILABLE', 'daemon alive and still AVAILABLE');
  t.same(await sums(), before, 'volume checksum and stale count unchanged');
  t.equal(c.procs.get('alpha')!.exitCode, null, 'process still running');
});

t.test('GeoMessage handlers: authenticated malformed payloads from the peer change nothing', { skip: missingTools('qemu-io') }, async (t) => {
  const { c, sums, before } = await aloneWithData(t);
  // Play beta with the real cluster key and beta's endpoints (beta's own process is not running).
  const cfg = await loadConfig(c.cfgPath);
  const net = await openGeoMessage({
    machine: 'beta', key: await loadClusterKey(cfg.cluster.keyFile), endpoints: endpointsOf(cfg, 'beta', 3),
    peers: [{ machine: 'alpha', endpoints: endpointsOf(cfg, 'alpha', 3), promoteFailureTimeoutMs: 0 }],
  });
  t.teardown(() => net.close());
  const hdr = (kind: number, off: number, len: number) => encodeHeader(kind, 0, off, len);
  const j = (v: unknown) => Buffer.from(JSON.stringify(v));
  const u32 = (n: number) => { const b = Buffer.alloc(4); b.writeUInt32BE(n >>> 0); return b; };
  const cases: Array<[string, number, Buffer]> = [
    ['write: empty', SVC_WRITE, Buffer.alloc(0)],
    ['write: short header', SVC_WRITE, Buffer.alloc(9, 1)],
    ['write: length beyond payload', SVC_WRITE, Buffer.concat([hdr(KIND_APP, 0, 4096), Buffer.alloc(100)])],
    ['write: past the end', SVC_WRITE, Buffer.concat([hdr(KIND_APP, SIZE - 512, 4096), Buffer.alloc(4096)])],
    ['write: offset 2^63', SVC_WRITE, Buffer.concat([Buffer.from([0, 0, 0, 0, 0, 0, 16, 0, 0x80, 0, 0, 0, 0, 0, 0, 0]), Buffer.alloc(4096)])],
    ['write: zero length', SVC_WRITE, hdr(KIND_APP, 0, 0)],
    ['write: app write from a non-active peer', SVC_WRITE, Buffer.concat([hdr(KIND_APP, 0, 512), Buffer.alloc(512, 0xee)])],
    ['write: resync write from a peer not resyncing with us', SVC_WRITE, Buffer.concat([hdr(KIND_RESYNC, 0, 512), Buffer.alloc(512, 0xee)])],
    ['zero: well-formed, from a non-active peer', SVC_ZERO, hdr(KIND_APP, 0, 65536)],
    ['writev: empty', SVC_WRITEV, Buffer.alloc(0)],
    ['writev: count 2^32-1, no items', SVC_WRITEV, u32(0xffffffff)],
    ['writev: truncated item', SVC_WRITEV, Buffer.concat([u32(1), hdr(KIND_APP, 0, 4096), Buffer.alloc(10)])],
    ['writev: trailing bytes', SVC_WRITEV, Buffer.concat([u32(1), hdr(KIND_APP, 0, 4), Buffer.alloc(4), Buffer.alloc(3)])],
    ['read: short', SVC_READ, Buffer.alloc(3)],
    ['read: past the end', SVC_READ, hdr(KIND_RESYNC, SIZE, 4096)],
    ['zero: short', SVC_ZERO, Buffer.alloc(5)],
    ['zero: past the end', SVC_ZERO, hdr(KIND_APP, SIZE - 1, 2)],
    ['zero: zero length', SVC_ZERO, hdr(KIND_APP, 0, 0)],
    ['control: not JSON', SVC_CONTROL, Buffer.from('{op:')],
    ['control: null', SVC_CONTROL, j(null)],
    ['control: number', SVC_CONTROL, j(7)],
    ['control: no op', SVC_CONTROL, j({})],
    ['control: unknown op', SVC_CONTROL, j({ op: 'rm -rf' })],
    ['control: join without from', SVC_CONTROL, j({ op: 'join' })],
    ['control: join with from null', SVC_CONTROL, j({ op: 'join', from: null })],
    ['control: join with a mismatched definition', SVC_CONTROL, j({ op: 'join', from: { mode: 'sync', size: 1, minor: 9, role: 'primary' } })],
    ['control: or-map with a number', SVC_CONTROL, j({ op: 'or-map', cells: 5 })],
    ['control: or-map while AVAILABLE', SVC_CONTROL, j({ op: 'or-map', cells: Buffer.alloc(128, 0xf).toString('base64') })],
    ['control: clear-map while AVAILABLE', SVC_CONTROL, j({ op: 'clear-map' })],
    ['control: clean-regions not an array', SVC_CONTROL, j({ op: 'clean-regions', regions: 'abc' })],
    ['control: clean-regions odd numbers', SVC_CONTROL, j({ op: 'clean-regions', regions: [1.5, -1, 1e9, '3', null] })],
    ['control: clean-regions of stale regions from a non-active peer', SVC_CONTROL, j({ op: 'clean-regions', regions: [0, 1, 2, 96] })],
    ['unknown service', 0x7f, Buffer.from('hello')],
  ];
  for (let i = 0; i < 40; i++) cases.push([`random ${i}`, [SVC_WRITE, SVC_WRITEV, SVC_READ, SVC_ZERO, SVC_CONTROL, SVC_FLUSH][i % 6]!, Buffer.from(Array.from({ length: (i * 37) % 300 }, (_, k) => (k * 131 + i * 17) & 0xff))]);
  const results: string[] = [];
  for (const [what, svc, payload] of cases) {
    const r = await net.request('alpha', svc, payload, { timeoutMs: 5000 }).then(() => 'ok', (e: unknown) => `error ${(e as { code?: string }).code ?? ''} ${(e as Error).message}`);
    results.push(`${what}: ${r}`);
  }
  t.comment(results.join('\n'));
  const named = results.slice(0, cases.length - 40);
  t.same(named.filter((r) => r.endsWith(': ok')), [], 'every malformed or out-of-place request was refused');
  const st = await c.status('alpha');
  t.equal(st.state, 'AVAILABLE', 'alpha still AVAILABLE');
  t.equal(st.peers[0]!.active, false, 'no peer was attached by a malformed join');
  t.same(await sums(), before, 'volume checksum and stale count unchanged');
  t.equal(c.procs.get('alpha')!.exitCode, null, 'process still running');

  // Now as the active peer: join with a matching definition (the fake beta swallows the resync), then
  // send malformed payloads that pass the active-peer check and reach each parser.
  const s0 = await c.status('alpha');
  for (const svc of [SVC_WRITE, SVC_WRITEV, SVC_FLUSH, SVC_ZERO]) net.handle(svc, async () => Buffer.alloc(0));
  net.handle(SVC_CONTROL, async () => j({ ok: true }));
  await net.request('alpha', SVC_CONTROL, j({ op: 'join', from: { machine: 'beta', gmd: c.gmd, minor: 3, size: SIZE, mode: 'mwc', role: 'secondary',
    state: 'AVAILABLE', mapDirty: false, activePeers: [], regionSize: 32768, configDigest: '' } }), { timeoutMs: 5000 });
  const joined = await c.waitFor('alpha', (s) => s.peers[0]!.active && s.map?.stale === 0, 'fake beta active, resync done', 20000);
  t.ok(joined.stats.resyncBytesSent >= Number(s0.map?.stale) * 32768, 'alpha pushed its stale regions to the fake beta');
  const before2 = await sums();
  const active: Array<[string, number, Buffer]> = [
    ['writev: count 2^32-1, no items', SVC_WRITEV, u32(0xffffffff)],
    ['writev: truncated item', SVC_WRITEV, Buffer.concat([u32(2), hdr(KIND_APP, 0, 4), Buffer.alloc(4, 0xee), hdr(KIND_APP, 8, 4096), Buffer.alloc(10)])],
    ['writev: item past the end', SVC_WRITEV, Buffer.concat([u32(2), hdr(KIND_APP, 0, 4), Buffer.alloc(4, 0xee), hdr(KIND_APP, SIZE, 4), Buffer.alloc(4)])],
    ['writev: trailing bytes', SVC_WRITEV, Buffer.concat([u32(1), hdr(KIND_APP, 0, 4), Buffer.alloc(4, 0xee), Buffer.alloc(3)])],
    ['write: length beyond payload', SVC_WRITE, Buffer.concat([hdr(KIND_APP, 0, 4096), Buffer.alloc(100, 0xee)])],
    ['write: past the end', SVC_WRITE, Buffer.concat([hdr(KIND_APP, SIZE - 512, 4096), Buffer.alloc(4096, 0xee)])],
    ['zero: past the end', SVC_ZERO, hdr(KIND_APP, SIZE - 1, 2)],
    ['zero: short', SVC_ZERO, Buffer.alloc(7)],
    ['control: clean-regions not an array', SVC_CONTROL, j({ op: 'clean-regions', regions: 'abc' })],
    ['control: clean-regions odd numbers', SVC_CONTROL, j({ op: 'clean-regions', regions: [1, 1.5, -1, 1e9, '3', null] })],
    ['control: or-map while AVAILABLE', SVC_CONTROL, j({ op: 'or-map', cells: 'AAAA' })],
    ['control: join with from null', SVC_CONTROL, j({ op: 'join', from: null })],
  ];
  const res2: string[] = [];
  for (const [what, svc, payload] of active) {
    res2.push(`${what}: ${await net.request('alpha', svc, payload, { timeoutMs: 5000 }).then(() => 'ok', (e: unknown) => `error ${(e as Error).message}`)}`);
  }
  t.comment(res2.join('\n'));
  t.same(res2.filter((r) => r.endsWith(': ok')), [], 'every malformed request from the active peer was refused');
  t.same(await sums(), before2, 'volume checksum and stale count unchanged (active peer)');
  t.equal((await c.status('alpha')).state, 'AVAILABLE', 'alpha still AVAILABLE');
});

/**
 * TRIM and WRITE_ZEROES on a GMD (real `gmd run` processes, real UDP on loopback, libnbd's nbdsh as
 * the client). The rule under test (GeoMirrorDevice.trim): a TRIM is "zero, holes allowed" on each
 * side, so both volumes read zeros there whatever each can do, and stay byte-identical (cmp) while
 * each punches holes where it can. WRITE_ZEROES keeps its NO_HOLE (allocated on both sides) and
 * FAST_ZERO (judged on the primary's volume, ENOTSUP with neither volume changed) meanings.
 *
 * Cases: both sides with fallocate, per mode; a secondary without the native addon (cannot punch or
 * zero a range: writes zeros); volumes on tmpfs (no ZERO_RANGE: NO_HOLE falls back to writing
 * zeros on both sides, FAST_ZERO|NO_HOLE is refused); a primary without the addon (TRIM not advertised, a
 * TRIM sent anyway changes nothing); writes and overlapping trims/zeros in flight together (async:
 * the zero must not overtake mirrored writes still in the batcher); trims while the secondary is
 * down, then resync; resync (push and pull) keeps zeros the source has allocated allocated on the
 * copy, and holes holes.
 */
import t, { type Test } from 'tap';
import { randomBytes } from 'node:crypto';
import { closeSync, openSync, statSync } from 'node:fs';
import { mkdir, open, rename, symlink } from 'node:fs/promises';
import { join } from 'node:path';
import { TestCluster, identical } from './cluster.js';
import { nbdsh, type PyCheck } from '../nbd/clients.js';
import { missingTools, needsRoot } from '../helpers/env.js';
import { runCmd } from '../helpers/proc.js';
import { nativeAvailable, seekData, seekHole } from '../../src/native/index.js';
import type { GmdMode } from '../../src/gmd/protocol.js';

const K = 1024;
const M = 1024 * K;
const SIZE = 8 * M;
const REGION = 32 * K;
const NO_HOLE = 2; // NBD_CMD_FLAG_NO_HOLE
const FAST_ZERO = 16; // NBD_CMD_FLAG_FAST_ZERO
const FUA = 1;

type Expect = 'ok' | 'ENOTSUP' | 'noop';
interface Op { cmd: 'trim' | 'zero'; offset: number; length: number; flags: number; expect: Expect }

/** The trims and zeros every case applies, several not aligned to 4 KiB. */
function ops(over: Partial<Record<number, Expect>> = {}): Op[] {
  const list: Array<Omit<Op, 'expect'>> = [
    { cmd: 'trim', offset: 1 * M, length: 1 * M, flags: 0 },                    // 0: whole blocks: holes
    { cmd: 'trim', offset: 2 * M + 1000, length: 70000, flags: 0 },              // 1: partial blocks at both ends
    { cmd: 'trim', offset: 3 * M + 100, length: 300, flags: FUA },               // 2: inside one block
    { cmd: 'zero', offset: 4 * M + 512, length: 200000, flags: 0 },              // 3: holes allowed
    { cmd: 'zero', offset: 5 * M, length: 1 * M, flags: NO_HOLE },               // 4: must stay allocated
    { cmd: 'zero', offset: 6 * M + 3, length: 5000, flags: NO_HOLE },            // 5: unaligned, in place
    { cmd: 'zero', offset: 6 * M + 512 * K, length: 256 * K, flags: FAST_ZERO }, // 6
    { cmd: 'zero', offset: 7 * M + 17, length: 40000, flags: FAST_ZERO | NO_HOLE }, // 7
  ];
  return list.map((o, i) => ({ ...o, expect: over[i] ?? 'ok' }));
}
/** Whole 4 KiB blocks of the trims that must be holes where the volume can punch: [start, end). */
const HOLES: Array<[number, number]> = [[1 * M, 2 * M], [2 * M + 4096, 2 * M + 69632]];
/** Bytes the trims free at least (op 0) and at most (ops 0-2, whole blocks), given all else allocated. */
const FREED_MIN = 1 * M;
const FREED_MAX = 1 * M + 72 * K;

/**
 * nbdsh: fills the device with seeded random data (FILL=1) or reads it as the model, applies `ops`
 * checking each answer, then checks through NBD that the device equals the model (zeroed ranges read
 * zeros, everything else unchanged) and that TRIM is advertised as expected.
 */
const OPS_SCRIPT = `
import random
uri = os.environ['URI']
size = int(os.environ['SIZE'])
ops = json.loads(os.environ['OPS'])
h = nbd.NBD()
h.set_strict_mode(0)   # send a TRIM / FAST_ZERO even when not advertised: the server must cope
h.connect_uri(uri)
check('size', h.get_size() == size, h.get_size())
check('can_trim as expected', h.can_trim() == (os.environ['CAN_TRIM'] == '1'), h.can_trim())
# FAST_ZERO is advertised with WRITE_ZEROES (nbd/exports.ts): a side that cannot zero fast answers ENOTSUP.
check('can_fast_zero', h.can_fast_zero())
check('can_zero', h.can_zero())
if os.environ['FILL'] == '1':
    model = bytearray(random.Random(int(os.environ['SEED'])).randbytes(size))
    for o in range(0, size, 1024*1024):
        h.pwrite(bytes(model[o:o+1024*1024]), o)
else:
    model = bytearray(h.pread(size, 0))
for i, op in enumerate(ops):
    name = '%d: %s %d+%d flags %d -> %s' % (i, op['cmd'], op['offset'], op['length'], op['flags'], op['expect'])
    try:
        if op['cmd'] == 'trim':
            h.trim(op['length'], op['offset'], op['flags'])
        else:
            h.zero(op['length'], op['offset'], op['flags'])
        check(name, op['expect'] != 'ENOTSUP', 'succeeded')
        if op['expect'] == 'ok':
            model[op['offset']:op['offset']+op['length']] = bytes(op['length'])
    except nbd.Error as e:
        check(name, op['expect'] == 'ENOTSUP' and e.errno == 'ENOTSUP', 'errno=%s %s' % (e.errno, e.string))
h.flush()
got = h.pread(size, 0)
bad = next((k for k in range(0, size, 4096) if got[k:k+4096] != model[k:k+4096]), None)
check('device reads as the model (zeroed ranges zero, the rest unchanged)', bad is None, 'first differing 4K block at %s' % bad)
h.shutdown()
`;

async function runOps(c: TestCluster, name: string, list: Op[], env: { canTrim: boolean; fill: boolean }): Promise<PyCheck[]> {
  return nbdsh(c.dir, name, OPS_SCRIPT, {
    URI: c.uri, SIZE: String(SIZE), OPS: JSON.stringify(list), SEED: '4242',
    CAN_TRIM: env.canTrim ? '1' : '0', FILL: env.fill ? '1' : '0',
  });
}

function report(t: { ok: (v: unknown, msg: string) => unknown }, checks: PyCheck[], who: string): void {
  for (const c of checks) t.ok(c.ok, `${who}: ${c.name}${c.detail ? ` (${c.detail})` : ''}`);
}

/** Bytes allocated to a file (st_blocks × 512). */
const allocated = (path: string): number => statSync(path).blocks * 512;

/** Whether [start, end) of the file is one hole (SEEK_HOLE finds it at start, SEEK_DATA past end). */
function isHole(path: string, start: number, end: number): boolean {
  const fd = openSync(path, 'r');
  try {
    const d = seekData(fd, start);
    return seekHole(fd, start) === start && (d === null || d >= end);
  } finally { closeSync(fd); }
}

/**
 * Bytes of [start, end) the file has allocated, unwritten (preallocated) extents included. SEEK_DATA
 * cannot say this (ext4 and XFS report unwritten extents as holes unless their pages are cached);
 * FIEMAP, through filefrag, can.
 */
async function allocatedIn(path: string, start: number, end: number): Promise<number> {
  const r = await runCmd('filefrag', ['-s', '-v', '-b1024', path]);
  if (r.code !== 0) throw new Error(`filefrag ${path} failed: ${r.stderr}`);
  let bytes = 0;
  // Extent lines: "   0:        0..    1023:   66718720..  66719743:   1024:   unwritten" (1 KiB units).
  for (const m of r.stdout.matchAll(/^\s*\d+:\s*(\d+)\.\.\s*(\d+):/gm)) {
    const s0 = Number(m[1]) * K, e0 = (Number(m[2]) + 1) * K;
    bytes += Math.max(0, Math.min(end, e0) - Math.max(start, s0));
  }
  return bytes;
}

/** Writes `data` into the file at `offset` as plain data (zeros included: allocated, not holes). */
async function put(path: string, offset: number, data: Buffer): Promise<void> {
  const fh = await open(path, 'r+');
  try { await fh.write(data, 0, data.length, offset); await fh.datasync(); } finally { await fh.close(); }
}

async function stopBoth(c: TestCluster): Promise<void> {
  // Primary first: its stop drains the async queue to the secondary.
  await c.terminate('alpha');
  await c.terminate('beta');
}

/** After a workload with the peer attached throughout: nothing failed or went stale, and once both are stopped the volumes are identical. */
async function checkMirroredIdentical(t: Test, c: TestCluster, staleMessage: string): Promise<void> {
  const s = await c.status('alpha');
  t.equal(s.stats.remoteFailures, 0, 'no remote failure');
  t.equal(s.map?.stale, 0, staleMessage);
  await stopBoth(c);
  const same = await identical(c.vol.alpha!, c.vol.beta!);
  t.ok(same.same, `volumes byte-identical ${same.detail}`);
}

const noAddon = nativeAvailable ? false : 'the native addon is not built (fallocate, SEEK_DATA)';
const skipBase = noAddon || missingTools('nbdsh', 'cmp');

for (const mode of ['sync', 'mwc', 'async'] as GmdMode[]) {
  t.test(`${mode}: trims and zeros (aligned or not, NO_HOLE, FAST_ZERO) read zeros, both volumes identical and punched`, { skip: skipBase }, async (t) => {
    const c = await TestCluster.create({ mode, size: SIZE });
    t.teardown(() => c.cleanup());
    await c.up();
    report(t, await runOps(c, `ops-${mode}`, ops(), { canTrim: true, fill: true }), mode);
    await checkMirroredIdentical(t, c, 'nothing marked stale: every trim and zero reached the secondary');
    for (const m of ['alpha', 'beta']) {
      const a = allocated(c.vol[m]!);
      // Freed: the trims' whole blocks. Kept: NO_HOLE and plain zeros (ZERO_RANGE) stay allocated.
      t.ok(a <= SIZE - FREED_MIN + 64 * K && a >= SIZE - FREED_MAX - 64 * K, `${m}: the trims punched holes and nothing else did (${a} bytes allocated of ${SIZE})`);
      for (const [s0, e0] of HOLES) t.ok(isHole(c.vol[m]!, s0, e0), `${m}: [${s0}, ${e0}) is a hole`);
    }
  });
}

t.test('mwc: a secondary without the native addon (no punch, no ZERO_RANGE) writes zeros where the primary punches: identical', { skip: skipBase }, async (t) => {
  const c = await TestCluster.create({ mode: 'mwc', size: SIZE });
  t.teardown(() => c.cleanup());
  await c.run('alpha');
  await c.run('beta', [], { GEORM_NATIVE_DISABLE: '1' });
  await c.start('alpha', ['beta']);
  await c.start('beta');
  report(t, await runOps(c, 'ops-beta-plain', ops(), { canTrim: true, fill: true }), 'beta without addon');
  t.equal((await c.status('alpha')).stats.remoteFailures, 0, 'no remote failure');
  await stopBoth(c);
  const same = await identical(c.vol.alpha!, c.vol.beta!);
  t.ok(same.same, `volumes byte-identical although only alpha could punch ${same.detail}`);
  for (const [s0, e0] of HOLES) t.ok(isHole(c.vol.alpha!, s0, e0), `alpha: [${s0}, ${e0}) is a hole`);
  t.ok(allocated(c.vol.beta!) >= SIZE, `beta: zeros written, fully allocated (${allocated(c.vol.beta!)})`);
});

t.test('mwc: volumes on tmpfs (no ZERO_RANGE): NO_HOLE falls back to writing zeros on both sides, FAST_ZERO|NO_HOLE is refused and changes neither side', { skip: skipBase || needsRoot() }, async (t) => {
  const c = await TestCluster.create({ mode: 'mwc', size: SIZE });
  const tmpfs = join(c.dir, 'tmpfs');
  await mkdir(tmpfs);
  const mounted = (await runCmd('mount', ['-t', 'tmpfs', '-o', 'size=32m', 'tmpfs', tmpfs])).code === 0;
  // Unmounted first: the cluster's cleanup removes its directory, which fails on a mount point still in use.
  t.teardown(async () => { if (mounted) await runCmd('umount', ['-l', tmpfs]); await c.cleanup().catch(() => undefined); });
  t.ok(mounted, 'tmpfs mounted');
  if (!mounted) return;
  // Each configured volume path becomes a link to a file on tmpfs.
  const vol: Record<string, string> = {};
  for (const m of ['alpha', 'beta']) {
    vol[m] = join(tmpfs, `${m}.img`);
    await runCmd('cp', ['--sparse=always', c.vol[m]!, vol[m]!]);
    await rename(c.vol[m]!, `${c.vol[m]!}.unused`);
    await symlink(vol[m]!, c.vol[m]!);
  }
  await c.up();
  report(t, await runOps(c, 'ops-tmpfs', ops({ 7: 'ENOTSUP' }), { canTrim: true, fill: true }), 'tmpfs');
  const s = await c.status('alpha');
  t.equal(s.stats.remoteFailures, 0, 'no remote failure');
  t.equal(s.map?.stale, 0, 'the refused fast zero marked nothing stale');
  await stopBoth(c);
  const same = await identical(vol.alpha!, vol.beta!);
  t.ok(same.same, `volumes byte-identical ${same.detail}`);
  for (const m of ['alpha', 'beta']) {
    for (const [s0, e0] of HOLES) t.ok(isHole(vol[m]!, s0, e0), `${m}: [${s0}, ${e0}) is a hole`);
    // NO_HOLE reached the secondary too: on tmpfs it may punch, and must not have.
    t.notOk(isHole(vol[m]!, 5 * M, 6 * M), `${m}: the NO_HOLE range [5M, 6M) stayed allocated`);
  }
});

t.test('mwc: a primary without the native addon advertises no TRIM and no FAST_ZERO; a TRIM sent anyway changes neither side', { skip: skipBase }, async (t) => {
  const c = await TestCluster.create({ mode: 'mwc', size: SIZE });
  t.teardown(() => c.cleanup());
  await c.run('alpha', [], { GEORM_NATIVE_DISABLE: '1' });
  await c.run('beta');
  await c.start('alpha', ['beta']);
  await c.start('beta');
  const expect = ops({ 0: 'noop', 1: 'noop', 2: 'noop', 6: 'ENOTSUP', 7: 'ENOTSUP' });
  report(t, await runOps(c, 'ops-alpha-plain', expect, { canTrim: false, fill: true }), 'alpha without addon');
  await stopBoth(c);
  const same = await identical(c.vol.alpha!, c.vol.beta!);
  t.ok(same.same, `volumes byte-identical ${same.detail}`);
  t.notOk(isHole(c.vol.beta!, 1 * M, 2 * M), 'beta: the TRIM did not punch there either');
});

/**
 * Writes with an overlapping trim or zero in flight at the same time (one nbdsh connection, no wait
 * in between). NBD leaves their order open, but the GMD must apply them in the same order on both
 * sides. In async the write is acknowledged with its mirrored copy still in the batcher (sent at the
 * end of the event-loop turn); a zero sent straight away overtook it, and the secondary kept the
 * write's data where the primary had zeros, with both maps clean.
 */
const RACE_SCRIPT = `
import random
uri = os.environ['URI']
size = int(os.environ['SIZE'])
h = nbd.NBD()
h.connect_uri(uri)
rnd = random.Random(7)
h.pwrite(rnd.randbytes(size), 0)
bufs = []   # aio buffers must live until their command completes
cookies = []
for i in range(int(os.environ['ROUNDS'])):
    off = (i * 40960 + (i % 9) * 512) % (size - 65536)
    b = nbd.Buffer.from_bytearray(bytearray(rnd.randbytes(8192 + (i % 3) * 1000)))
    bufs.append(b)
    cookies.append(h.aio_pwrite(b, off))
    if i % 3 == 0:
        cookies.append(h.aio_trim(4096 + (i % 5) * 700, off + (i % 4) * 1000))
    elif i % 3 == 1:
        cookies.append(h.aio_zero(6000, off + 100, flags=nbd.CMD_FLAG_NO_HOLE if i % 2 else 0))
    else:
        b2 = nbd.Buffer.from_bytearray(bytearray(b'\\xa5' * 3000))
        bufs.append(b2)
        cookies.append(h.aio_pwrite(b2, off + 2000))
        cookies.append(h.aio_trim(8192, off))
    while h.aio_in_flight() > 48:
        h.poll(-1)
while h.aio_in_flight() > 0:
    h.poll(-1)
failed = 0
for c in cookies:
    try:
        h.aio_command_completed(c)
    except nbd.Error:
        failed += 1
check('every command succeeded', failed == 0, '%d of %d failed' % (failed, len(cookies)))
h.flush()
h.shutdown()
`;

for (const mode of ['async', 'mwc'] as GmdMode[]) {
  t.test(`${mode}: writes and overlapping trims/zeros in flight together end identical on both sides`, { skip: skipBase }, async (t) => {
    const c = await TestCluster.create({ mode, size: SIZE });
    t.teardown(() => c.cleanup());
    await c.up();
    report(t, await nbdsh(c.dir, `race-${mode}`, RACE_SCRIPT, { URI: c.uri, SIZE: String(SIZE), ROUNDS: '600' }), mode);
    await checkMirroredIdentical(t, c, 'nothing stale (a divergence would not be marked: only cmp sees it)');
  });
}

for (const mode of ['mwc', 'async'] as GmdMode[]) {
  t.test(`${mode}: trims and zeros while the secondary is down are marked stale; resync makes the volumes identical and punches the secondary`, { skip: skipBase || missingTools('filefrag') }, async (t) => {
    const c = await TestCluster.create({ mode, size: SIZE });
    t.teardown(() => c.cleanup());
    await c.up();
    // Fill with data, mirrored, then take the secondary away.
    report(t, await runOps(c, `fill-${mode}`, [], { canTrim: true, fill: true }), 'fill');
    await c.waitInSync();
    const before = allocated(c.vol.beta!);
    await c.terminate('beta');
    await c.waitFor('alpha', (s) => !s.peers.some((p) => p.active), 'alpha stopped mirroring');
    report(t, await runOps(c, `down-${mode}`, ops(), { canTrim: true, fill: false }), 'peer down');
    const down = await c.status('alpha');
    // Regions touched by the 8 ops (32 KiB regions): 32 + 3 + 1 + 7 + 32 + 1 + 8 + 2.
    t.equal(down.map?.stale, 86, `the zeroed and trimmed regions are stale (${down.map?.stale})`);
    await c.run('beta');
    await c.start('beta');
    await c.waitInSync();
    const after = await c.waitFor('alpha', (s) => !!s.resync?.complete, 'resync complete', 30000);
    t.equal(after.stats.resyncBytesSent, 86 * REGION, 'exactly the stale regions were resynchronised');
    await stopBoth(c);
    const same = await identical(c.vol.alpha!, c.vol.beta!);
    t.ok(same.same, `volumes byte-identical after resync ${same.detail}`);
    // Chunks that read as zeros travel as zeros, after alpha's layout: its holes are punched on the
    // secondary too, its allocated zeros (the NO_HOLE zero, op 4) stay allocated there. Slack: the
    // extent tree block(s) of a more fragmented file.
    t.ok(isHole(c.vol.beta!, 1 * M, 2 * M), 'beta: the 1 MiB trimmed while it was down is a hole after resync');
    t.ok(allocated(c.vol.beta!) <= before - FREED_MIN + 16 * K, `beta: space freed by the resync (${before} -> ${allocated(c.vol.beta!)})`);
    t.equal(await allocatedIn(c.vol.beta!, 5 * M, 6 * M), 1 * M, 'beta: the NO_HOLE zero [5M, 6M) is still allocated after resync');
  });
}

/**
 * A resync chunk (256 KiB here) that reads as zeros travels as a zero. The source's layout decides
 * how: its holes stay holes on the copy, its allocated zeros stay allocated (NO_HOLE), and a chunk
 * with both is split. Before, every such zero allowed holes: allocated zeros became holes on the
 * copy (same bytes, lost allocation: a thick copy could then hit ENOSPC where the source cannot).
 * Layout, 4 MiB, every region dirty on the source:
 *   A [0, 1M)            source: zeros written as data    copy before: hole        -> allocated
 *   B [1M, 2M)           source: hole                     copy before: data        -> hole
 *   C1 [2M, 2M+128K)     source: zeros written as data    copy before: hole        -> allocated
 *   C2 [2M+128K, 2M+256K) source: hole (C1's chunk)     copy before: data        -> hole
 *   D [2M+256K, 3M)      source: data                     copy before: other data  -> data
 *   F [3M, 3M+512K)      source: fallocated (unwritten)   copy before: hole        -> allocated
 *   E [3M+512K, 4M)      source: hole                     copy before: data        -> hole
 * F is seen as allocated because resync reads a chunk before asking for its layout (zero-runs.ts).
 */
const LAYOUT_SIZE = 4 * M;
const A: [number, number] = [0, 1 * M];
const B: [number, number] = [1 * M, 2 * M];
const C1: [number, number] = [2 * M, 2 * M + 128 * K];
const C2: [number, number] = [2 * M + 128 * K, 2 * M + 256 * K];
const D: [number, number] = [2 * M + 256 * K, 3 * M];
const F: [number, number] = [3 * M, 3 * M + 512 * K];
const E: [number, number] = [3 * M + 512 * K, 4 * M];
const len = ([s0, e0]: [number, number]): number => e0 - s0;

for (const direction of ['push', 'pull'] as const) {
  // push: the primary's map is dirty and it copies to the secondary; pull: the secondary's map is
  // dirty and the primary fetches from it.
  const [src, dst] = direction === 'push' ? ['alpha', 'beta'] : ['beta', 'alpha'];
  t.test(`mwc: resync (${direction}) keeps the source's allocated zeros allocated and its holes holes on the copy`, { skip: noAddon || missingTools('filefrag', 'fallocate', 'cmp') }, async (t) => {
    const c = await TestCluster.create({ mode: 'mwc', size: LAYOUT_SIZE, syncRate: '256K' });
    t.teardown(() => c.cleanup());
    await put(c.vol[src]!, A[0], Buffer.alloc(len(A)));
    await put(c.vol[src]!, C1[0], Buffer.alloc(len(C1)));
    await put(c.vol[src]!, D[0], randomBytes(len(D)));
    t.equal((await runCmd('fallocate', ['-o', String(F[0]), '-l', String(len(F)), c.vol[src]!])).code, 0, `${src}: F fallocated`);
    for (const r of [B, C2, D, E]) await put(c.vol[dst]!, r[0], randomBytes(len(r)));
    for (const r of [A, F]) {
      t.equal(await allocatedIn(c.vol[src]!, r[0], r[1]), len(r), `${src}: [${r[0]}, ${r[1]}) is allocated before the resync`);
      t.equal(await allocatedIn(c.vol[dst]!, r[0], r[1]), 0, `${dst}: [${r[0]}, ${r[1]}) is a hole before the resync`);
    }

    await c.run('alpha');
    await c.run('beta');
    await c.ctl(src, 'dirty');
    await c.start(src, [dst]);
    await c.start(dst);
    const done = await c.waitFor('alpha', (s) => !!s.resync?.complete, `${direction} complete`, 30000);
    t.equal(done.resync?.direction, direction, `the resync ran as a ${direction}`);
    await c.waitFor(src, (s) => s.map?.stale === 0, `${src} map clean`, 30000);
    await stopBoth(c);

    const same = await identical(c.vol.alpha!, c.vol.beta!);
    t.ok(same.same, `volumes byte-identical after the resync ${same.detail}`);
    const v = c.vol[dst]!;
    for (const [name, r] of [['A', A], ['C1', C1], ['D', D], ['F', F]] as const) {
      t.equal(await allocatedIn(v, r[0], r[1]), len(r), `${dst}: ${name} [${r[0]}, ${r[1]}) is allocated, as on ${src}`);
    }
    for (const [name, r] of [['B', B], ['C2', C2], ['E', E]] as const) {
      t.equal(await allocatedIn(v, r[0], r[1]), 0, `${dst}: ${name} [${r[0]}, ${r[1]}) is a hole, as on ${src}`);
      t.ok(isHole(v, r[0], r[1]), `${dst}: SEEK_DATA/SEEK_HOLE see ${name} as a hole`);
    }
  });
}

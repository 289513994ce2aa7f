import t, { type Test } from 'tap';
import { readFileSync, writeFileSync } from 'node:fs';
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { bootVm, dumpJobFile, keepArtifact, markers, type BootResult } from '../../scripts/vm/vm.js';
import { freePort } from '../../scripts/vm/host.js';
import { gmdWaitAttached } from '../../scripts/vm/jobs.js';
import { stopProcess } from '../../src/util/process.js';
import { sha256File } from './helpers.js';
import { runHostBeta, setupVmPair } from './gmd-config.js';
import { failBoot, noLibnbd, powerlossSkip as skip, powerlossWorkspace, PYTHON, recoverGuestPrimary } from './powerloss-common.js';

/**
 * Power loss of the primary's machine (DESIGN §4 rules 1 and 2 with "power loss", not kill -9).
 *
 * The GMD primary runs inside the qemu guest; its volume and state map live on an ext4 filesystem on
 * a guest virtio disk (/dev/vdc) backed by a host file (`dataDisk`, cache=writeback, see vm.ts). The
 * secondary runs on the host. A writer in the guest writes numbered 4 KiB records to /dev/nbd0, each
 * made durable before the next, and prints `DONE <seq>` to the serial console only after that
 * returned. How a record is made durable is the case's `writes`: `flush` = a buffered write plus
 * fdatasync, which the kernel sends as write + NBD FLUSH; `fua` = O_DIRECT|O_DSYNC, which Linux
 * sends as a write with FUA *followed by a FLUSH*; `mixed` alternates the two; `nbdfua` = the
 * records come from the host instead, through libnbd to the GMD's NBD listener in the guest, each a
 * FUA write with no FLUSH at all (see NBD_FUA_WRITER). The defaults, mwc:nbdfua and sync:flush,
 * give each durability path of the GMD a case of its own, so that mishandling either one fails. The
 * DONE lines are read on the host (serial console or host writer), so they survive the cut.
 *
 * Power cut = SIGKILL of qemu mid-workload: the guest's RAM (its page cache, the GMD process) is gone,
 * while what the guest kernel had written to its virtual disk stays. The data disk uses
 * cache=writeback: the guest sees a volatile write cache and sends flushes, and qemu turns each one
 * into an fdatasync of the host file. So a flush really reaches the host's disk. cache=none (O_DIRECT
 * on the host) would honour flushes too; cache=unsafe drops them. What the cut does not
 * model is a disk that loses sectors it was given but never asked to flush: those stay in the host's
 * page cache. A GMD that acknowledged a FLUSH
 * or FUA write without fdatasync of its volume, or issued a write before its state-map mark was
 * fdatasync'ed, leaves the data or the mark in the guest page cache, and the cut loses it. A kill -9
 * of the GMD process alone (test/gmd/crash.test.ts) cannot show that: the page cache survives it.
 *
 * Recovery follows the crash procedure of the other tests: the machine boots again with the same data
 * disk, the GMD is configured (its state map must load: a corrupt map is refused), started with
 * gmddown of the secondary, the secondary is started again and rejoins, and the regions the map
 * marked are resynchronised from the primary (the dirty side, rule 3). Checked: the secondary held
 * every acknowledged record right after the cut; the device the restarted GMD serves holds every
 * acknowledged record; the map after the cut marked regions (the writes in flight and the activity
 * log); after resync and a clean stop both volumes are byte-identical.
 */

// mode:writes cases; e.g. GEORM_POWERLOSS_CASES="mwc:mixed,sync:fua" runs others (async is not for this
// test: its secondary may lag, so "every acknowledged record on the secondary" does not hold there).
const CASES = (process.env.GEORM_POWERLOSS_CASES ?? 'mwc:nbdfua,sync:flush').split(',').map((c) => {
  const [mode, writes] = c.split(':') as [string, string | undefined];
  return { mode, writes: writes ?? 'mixed' };
});
const VOLUME_MB = 16;
const SEQ_SLACK = 4;         // records the guest may have completed whose DONE line the cut swallowed

/** Byte offset of record block `block`: one block per 32 KiB region, at varying places inside it. */
function blockOffset(block: number): number {
  return block * 32768 + (block % 8) * 4096;
}

/** Block written by record `seq` (a permutation cycle over 256 blocks) and its byte offset. */
function recordPlace(seq: number): { block: number; offset: number } {
  const block = (seq * 97) % 256;
  return { block, offset: blockOffset(block) };
}

/** The 4 KiB of record `seq`: magic, seq, block, the run's tag, then words derived from seq (a torn block shows). */
function fillRecord(buf: Buffer, seq: number, block: number, tag: string): void {
  buf.fill(0, 0, 4096);
  buf.write('GEORM-PL', 0, 'latin1');
  buf.writeUInt32LE(seq, 8);
  buf.writeUInt32LE(block, 12);
  buf.write(tag, 16, 'latin1');
  for (let i = 32; i < 4096; i += 4) buf.writeUInt32LE((Math.imul(seq, 2654435761) + i) >>> 0, i);
}

/** The guest's writer (node, CommonJS), built from the two functions above so host and guest agree. */
function writerScript(): string {
  return `'use strict';
const fs = require('fs');
${blockOffset.toString()}
${recordPlace.toString()}
${fillRecord.toString()}
const tag = process.argv[2];
const writes = process.argv[3];
const say = (s) => fs.writeSync(1, s + '\\n');
const fdBuf = fs.openSync('/dev/nbd0', fs.constants.O_WRONLY);
const fdFua = fs.openSync('/dev/nbd0', fs.constants.O_WRONLY | fs.constants.O_DIRECT | fs.constants.O_DSYNC);
const plain = Buffer.alloc(4096);
// O_DIRECT needs an aligned buffer; JS cannot see addresses, so the first FUA write tries offsets
// into one big buffer (which never moves) until the kernel stops answering EINVAL.
const big = Buffer.allocUnsafeSlow(3 * 4096);
let shift = -1;
for (let seq = 1; seq < 1000000; seq++) {
  const { block, offset } = recordPlace(seq);
  let how = 'F';
  if ((writes === 'fua' || (writes === 'mixed' && seq % 2 === 1)) && shift !== -2) {
    for (let k = shift < 0 ? 0 : shift; k < 4096; k += 16) {
      const v = big.subarray(k, k + 4096);
      fillRecord(v, seq, block, tag);
      try { fs.writeSync(fdFua, v, 0, 4096, offset); shift = k; how = 'U'; break; } catch (e) { if (e.code !== 'EINVAL' || shift >= 0) throw e; }
    }
    if (how === 'F') { shift = -2; say('FUA-UNAVAILABLE'); }
  }
  if (how === 'F') { fillRecord(plain, seq, block, tag); fs.writeSync(fdBuf, plain, 0, 4096, offset); fs.fdatasyncSync(fdBuf); }
  say('DONE ' + seq + ' ' + block + ' ' + how);
}
`;
}

/**
 * The `nbdfua` writer: the same records, written from the host with libnbd over TCP (forwarded into
 * the guest) to the GMD's own NBD listener, each as one write with NBD_CMD_FLAG_FUA and nothing else.
 * The guest kernel's O_DIRECT|O_DSYNC write is not that: Linux follows its FUA write with a FLUSH,
 * so a GMD that ignored FUA would still be saved by the FLUSH (seen: breaking only FUA in the volume
 * backend did not fail the kernel case). The layout must match fillRecord.
 */
const NBD_FUA_WRITER = `import struct, sys
import nbd
uri, tag = sys.argv[1], sys.argv[2]
h = nbd.NBD()
h.connect_uri(uri)
seq = 1
while True:
    b = (seq * 97) % 256
    buf = bytearray(4096)
    buf[0:8] = b'GEORM-PL'
    struct.pack_into('<II', buf, 8, seq, b)
    buf[16:32] = tag.encode('latin1')
    for i in range(32, 4096, 4):
        struct.pack_into('<I', buf, i, (seq * 2654435761 + i) & 0xffffffff)
    h.pwrite(bytes(buf), b * 32768 + (b % 8) * 4096, nbd.CMD_FLAG_FUA)
    print('DONE %d %d U' % (seq, b), flush=True)
    seq += 1
`;
interface Acked { last: Map<number, number>; maxDone: number; count: number; fua: number }

/** The records the guest reported durable, from complete console lines only (the last one may be cut). */
function ackedRecords(consoleText: string): Acked {
  const lines = consoleText.split(/\r?\n/);
  lines.pop();
  const a: Acked = { last: new Map(), maxDone: 0, count: 0, fua: 0 };
  for (const l of lines) {
    const m = /^DONE (\d+) (\d+) ([FU])$/.exec(l.trim());
    if (!m) continue;
    const seq = Number(m[1]), block = Number(m[2]);
    if (recordPlace(seq).block !== block) continue;
    a.count++;
    if (m[3] === 'U') a.fua++;
    a.maxDone = Math.max(a.maxDone, seq);
    if ((a.last.get(block) ?? 0) < seq) a.last.set(block, seq);
  }
  return a;
}

/**
 * Every block must hold its last acknowledged record intact, or a later record for that block that
 * was in flight at the cut; a block never acknowledged may still be zero.
 */
function checkRecords(t: Test, image: Buffer, a: Acked, tag: string, what: string): void {
  const want = Buffer.alloc(4096);
  const bad: string[] = [];
  for (let b = 0; b < 256; b++) {
    const offset = blockOffset(b);
    const got = image.subarray(offset, offset + 4096);
    const acked = a.last.get(b) ?? 0;
    let seq = 0;
    if (!got.every((x) => x === 0)) {
      seq = got.readUInt32LE(8);
      fillRecord(want, seq, b, tag);
      if (!got.equals(want)) { bad.push(`block ${b}: not an intact record of this run (seq field ${seq})`); continue; }
    }
    const inFlight = seq > a.maxDone && seq <= a.maxDone + SEQ_SLACK && recordPlace(seq).block === b;
    if (seq !== acked && !inFlight) bad.push(`block ${b}: holds #${seq}, last acknowledged #${acked}`);
  }
  t.same(bad.slice(0, 8), [], `${what}: every acknowledged record present and intact (${a.last.size} blocks, ${a.count} records, last #${a.maxDone})`);
}

for (const { mode: MODE, writes } of CASES) t.test(`power cut of the primary's machine (qemu SIGKILL) under a durable write workload (${MODE}, ${writes}): no acknowledged write lost, map intact, identical after resync`,
  { skip: skip || (writes === 'nbdfua' && noLibnbd), timeout: 420_000 }, async (t) => {
  const { dir, job, images, track, tag, dataDisk } = await powerlossWorkspace(t, 'georm-vm-pl-');
  writeFileSync(join(job, 'plwriter.cjs'), writerScript());

  const hostWriter = writes === 'nbdfua';
  const NBD_GUEST_PORT = 10809;
  const nbdHostPort = await freePort();
  const { pair, hostCfg, udpIn } = await setupVmPair(dir, job, { mode: MODE, alphaVolume: '/data/alpha.img', alphaMap: '/data/alpha.map',
    betaSizeMb: VOLUME_MB, ...(hostWriter ? { alphaNbdListen: [`tcp://0.0.0.0:${NBD_GUEST_PORT}`] } : {}) });
  writeFileSync(join(dir, 'nbdfua.py'), NBD_FUA_WRITER);

  const fail = (res: BootResult, name: string, what: string): void => failBoot(t, res, name, what, beta.log());

  // --- boot 1: mirror up, writer running, power cut -------------------------------------------------
  const beta = runHostBeta(hostCfg, pair.beta.runDir, track, ['--start', '--down', 'alpha']);
  await beta.available();
  writeFileSync(join(job, 'run.sh'), `set -e
mkdir -p /data /tmp/run
mount /dev/vdc /data
truncate -s ${VOLUME_MB}M /data/alpha.img
sync
node /job/georm/bin/georm.js gmd run vm0gmd --config /job/georm.toml --machine alpha --start >/tmp/gmd.out 2>/tmp/gmd.err &
GEORM_PID=$!
${gmdWaitAttached()}echo "OK attached /dev/nbd0 $(cat /sys/block/nbd0/size) sectors"
echo "NBDQUEUE $(cat /sys/block/nbd0/queue/write_cache | tr ' ' _) $(cat /sys/block/nbd0/queue/fua)"
${hostWriter ? 'echo "OK ready for the host writer"; sleep 600' : `node /job/plwriter.cjs ${tag} ${writes}`}
`);
  // Cut after a random 4–10 s of records (and at least 40 of them), well inside the guest's 30 s
  // dirty-page expiry: data or marks left in the guest page cache are then really lost.
  const cutAfterMs = 4000 + Math.floor(Math.random() * 6000);
  let qemu: ChildProcess | undefined;
  let firstDone = 0;
  let doneCount = 0;
  let cut = false;
  let tail = '';
  let console1 = '';
  let writer: ChildProcess | undefined;
  let writerOut = '';
  let writerErr = '';
  // DONE lines come from the guest's console, or from the host writer's stdout.
  const progress = (d: string): void => {
    tail += d;
    const lines = tail.split('\n');
    tail = lines.pop()!;
    for (const l of lines) if (l.trim().startsWith('DONE ')) { doneCount++; if (!firstDone) firstDone = Date.now(); }
    if (!cut && firstDone && doneCount >= 40 && Date.now() - firstDone >= cutAfterMs) {
      cut = true;
      qemu?.kill('SIGKILL');   // the power cut
    }
  };
  const res1 = await bootVm({
    images, jobDir: job, workDir: join(dir, 'vm1'), timeoutMs: 240_000, jobSpaceMb: 64, dataDisk,
    udpIn, ...(hostWriter ? { tcpIn: [{ guest: NBD_GUEST_PORT, host: nbdHostPort }] } : {}),
    track: (c) => { qemu = c; track(c); },
    onConsole: (d) => {
      if (!hostWriter) { progress(d); return; }
      console1 += d;
      if (!writer && console1.includes('OK ready for the host writer')) {
        writer = spawn(PYTHON, [join(dir, 'nbdfua.py'), `nbd://127.0.0.1:${nbdHostPort}/vm0gmd`, tag], { stdio: ['ignore', 'pipe', 'pipe'] });
        track(writer);
        writer.stdout!.setEncoding('utf8').on('data', (w: string) => { writerOut += w; progress(w); });
        writer.stderr!.setEncoding('utf8').on('data', (w: string) => { writerErr += w; });
      }
    },
  });
  if (writer) await stopProcess(writer, 'SIGTERM', 10_000);
  if (hostWriter) t.comment(`host writer stderr (expected: the connection broke at the cut): ${writerErr.trim().split('\n').slice(-2).join(' | ')}`);
  if (!cut) { fail(res1, 'powerloss-boot1', `the workload never reached the cut (guest exit ${res1.exitCode}, timed out ${res1.timedOut})`); await stopProcess(beta.child, 'SIGTERM', 10_000); return; }
  const acked = ackedRecords(hostWriter ? writerOut : res1.console);
  t.comment(`power cut after ${cutAfterMs} ms of records: ${acked.count} acknowledged (${acked.fua} with FUA), last #${acked.maxDone}`);
  if (writes === 'fua' || writes === 'mixed') t.notOk(/FUA-UNAVAILABLE/.test(res1.console), 'the guest could write records with O_DIRECT|O_DSYNC (FUA)');
  t.equal(acked.fua, writes === 'fua' || hostWriter ? acked.count : writes === 'flush' ? 0 : acked.fua, `records written as the case says (${writes})`);
  t.ok(acked.count >= 40, 'at least 40 records were acknowledged before the cut');
  t.comment(`guest /dev/nbd0 queue: write_cache, fua = ${markers(res1.console, 'NBDQUEUE')[0]?.join(', ')}`);

  // Rule 1 (sync, mwc): every acknowledged write is on the secondary already.
  checkRecords(t, readFileSync(pair.beta.volume), acked, tag, 'secondary right after the cut');

  // --- boot 2: same data disk, map loads, primary starts with gmddown, secondary rejoins, resync --------
  const { res: res2, betaStart: bs, betaCode } = await recoverGuestPrimary({
    images, job, workDir: join(dir, 'vm2'), dataDisk, volumeMb: VOLUME_MB, hostCfg, beta: beta.child, udpIn, track,
  });
  if (res2.exitCode !== 0) { fail(res2, 'powerloss-boot2', `recovery boot failed (exit ${res2.exitCode}${res2.timedOut ? ', timed out' : ''}); beta start: ${bs?.stdout}${bs?.stderr}`); return; }
  t.equal(bs?.code, 0, `the secondary started again and rejoined (${(bs?.stdout ?? '').trim()})`);

  const before = markers(res2.console, 'MAPBEFORE')[0] ?? [];
  t.equal(before[0], 'STOPPED', 'the state map left by the power cut loads (a corrupt map would be refused)');
  const map = JSON.parse(before.slice(1).join(' ') || 'null') as { stale: number; inconsistent: number; crashed: boolean } | null;
  t.comment(`state map after the cut: ${JSON.stringify(map)}`);
  // With the activity log (on by default) the regions written in the last seconds stay marked, so a
  // map that kept none of its marks through the cut was never made durable (fdatasync missing).
  t.ok(map && map.stale + map.inconsistent > 0, 'the map marks the regions written just before the cut (in flight or in the activity log)');
  t.equal(map?.crashed, true, 'the map records that the GMD did not stop cleanly');
  // Stricter: the regions of the last acknowledged records, written milliseconds before the cut, were
  // marked before their writes were issued and are still hot in the activity log. (Some older marks
  // may reach the disk anyway, through the guest's own writeback, so the count above can pass.)
  const cells = Buffer.from(markers(res2.console, 'CELLS')[0]?.[0] ?? '', 'base64');
  const lastRegions = [0, 1, 2].map((k) => Math.floor(blockOffset(recordPlace(acked.maxDone - k).block) / 32768));
  t.same(lastRegions.filter((r) => !cells[r]), [], `the regions of the last 3 acknowledged records (${lastRegions.join(', ')}) are marked in the map found after the cut`);
  t.match(res2.console, /OK in sync/, 'resync finished: both maps clean');
  t.match(res2.console, /EXPORT-EXIT 0/, 'the restarted GMD stopped cleanly');
  t.equal(betaCode, 0, 'the secondary stopped cleanly');

  // What the restarted GMD served after resync, then both volumes after a clean stop.
  const served = join(dir, 'served.img');
  const alphaVol = join(dir, 'alpha.img');
  await dumpJobFile(res2.jobImage, '/served.img', served);
  await dumpJobFile(dataDisk, '/alpha.img', alphaVol);
  checkRecords(t, readFileSync(served), acked, tag, 'device served by the restarted primary');
  const [ha, hb] = await Promise.all([sha256File(alphaVol), sha256File(pair.beta.volume)]);
  t.equal(ha, hb, 'after resync the primary\'s volume (on the data disk) and the secondary\'s are byte-identical');
  t.equal(await sha256File(served), ha, 'the served device equals the primary\'s volume');
  if (!t.passing()) t.comment(`consoles kept at ${keepArtifact(res1.consoleLog, 'powerloss-boot1')} and ${keepArtifact(res2.consoleLog, 'powerloss-boot2')}`);
});

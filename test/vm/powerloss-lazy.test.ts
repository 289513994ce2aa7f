import t, { type Test } from 'tap';
import { readFileSync, writeFileSync } from 'node:fs';
import type { ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { bootVm, dumpJobFile, keepArtifact, markers, type BootResult, type VmImages } from '../../scripts/vm/vm.js';
import { freePort } from '../../scripts/vm/host.js';
import { gmdWaitAttached } from '../../scripts/vm/jobs.js';
import { stopProcess } from '../../src/util/process.js';
import { runHostBeta, setupVmPair } from './gmd-config.js';
import {
  diffVolumes, failBoot, hostStatus, noLibnbd, PlainWriter, powerlossSkip, powerlossWorkspace, ranges, recoverGuestPrimary, type GmdStatus,
} from './powerloss-common.js';

/**
 * Power loss after acknowledged but never flushed writes (DESIGN §4 rule 2: after a crash of either
 * side at any instant, restart plus resync makes both volumes identical).
 *
 * A plain write (no FUA, no FLUSH) is acknowledged once it sits in the page cache of each side. A
 * power cut may lose it — that is allowed — but only if both volumes end up the same after resync,
 * i.e. if the state map of the side that drives the resync still marks the region. Linux keeps
 * dirty pages up to ~30 s (dirty_expire_centisecs), so a cut within a few seconds of the writes
 * really loses them; a kill -9 of the GMD process cannot show this, the page cache survives it.
 * The power cut is a SIGKILL of qemu; the guest's data disk is cache=writeback (see vm.ts).
 *
 *  secondary: the GMD *secondary* runs in the guest (volume and map on the data disk), the primary on
 *    the host. The host writes set P1 through the primary's NBD socket; both sides acknowledge and
 *    the primary counts those regions clean. A few seconds later the guest loses power. The
 *    primary keeps running, drops the silent peer (promote failure timeout) and takes set P2 (marked
 *    stale). The guest boots again, its secondary starts and rejoins, an application FLUSH comes at
 *    once (while the resync runs), the primary resyncs what its map marks, both stop cleanly, and the volumes are compared byte for byte. If the secondary lost P1
 *    from its page cache and nothing re-sends it, the volumes differ in P1's regions.
 *  primary: the GMD *primary* runs in the guest (as in powerloss.test.ts), the secondary on the host.
 *    Set A, then a pause longer than the activity log's idle time (5 s) plus its background writer
 *    (1 s), so A's regions are cleaned in the map image without any flush of the volume; then set B to
 *    new regions, whose durable marking (fdatasync of the map) also persists A's clean cells; then the
 *    power cut. Boot again, start with gmddown, the secondary rejoins, resync, stop, compare. If the
 *    primary lost A from its page cache while its map says clean, the volumes differ in A's regions.
 *
 * Which version of a lost write survives is not checked, only that both volumes end identical.
 *
 * The GMD's clean gate (clean-gate.ts) cleans a region only after both volumes were flushed after its
 * writes; it flushes both itself every GEORM_GMD_FLUSH_MS (default 30 s, the kernel's writeback age).
 * With the default the writes are still unflushed at the cut, which really loses them: the case checks
 * that a peer that drops turns those regions stale, and that a primary that crashes still has them
 * marked, so they travel again. With a short gate interval (third field, e.g. 1000) they were flushed
 * before the cut: the case checks that the gate's flush really reaches both disks (the loss report
 * then says 0 regions).
 *
 * Cases: GEORM_POWERLOSS_LAZY_CASES="side:mode[:gateMs],…", side secondary|primary, mode mwc|sync;
 * default below.
 */
const CASES = (process.env.GEORM_POWERLOSS_LAZY_CASES ?? 'secondary:mwc,secondary:sync,secondary:mwc:1000,primary:mwc,primary:mwc:1000')
  .split(',').map((c) => {
    const [side, mode, gate] = c.split(':') as [string, string | undefined, string | undefined];
    return { side, mode: mode ?? 'mwc', gateMs: gate ? Number(gate) : 0 };
  });
const VOLUME_MB = 16;          // 512 regions of 32 KiB
const PROMOTE_FAILURE_S = 8;   // the host primary drops the silent guest after this (default config: 30)

/** Guest commands that mount the data disk and give the volume real, written blocks (not sparse). */
function dataDiskSetup(): string {
  return `mkdir -p /data /tmp/run
mount /dev/vdc /data
dd if=/dev/zero of=/data/alpha.img bs=1M count=${VOLUME_MB} conv=fsync 2>/dev/null
sync
`;
}

/**
 * How much the cut lost: the guest's volume as the cut left it on the data disk against the host's.
 * A comment, not an assertion (it depends on the guest kernel's writeback): it shows whether the case
 * really probed lost writes, so that a pass after resync means something.
 */
async function reportLoss(t: Test, dataDisk: string, hostVolume: string, dest: string, tag: string): Promise<void> {
  await dumpJobFile(dataDisk, '/alpha.img', dest);
  const d = diffVolumes(readFileSync(hostVolume), readFileSync(dest), tag, 0);
  t.comment(`right after the cut the guest's volume differs from the host's in ${d.regions.length} region(s), ${d.blocks} blocks${d.regions.length ? `: ${ranges(d.regions)}` : ''}`);
}

/** Both volumes compared; the result is one assertion plus comments saying what differs. */
function compareVolumes(t: Test, a: string, b: string, tag: string, what: string): number {
  const d = diffVolumes(readFileSync(a), readFileSync(b), tag);
  t.comment(`${what}: ${d.regions.length} region(s) differ (${d.blocks} blocks of 4 KiB)${d.regions.length ? `: ${ranges(d.regions)}` : ''}`);
  for (const e of d.examples) t.comment(`  ${e}`);
  t.equal(d.regions.length, 0, `${what}: after resync and a clean stop both volumes are byte-identical`);
  return d.regions.length;
}

async function waitHost(runDir: string, ok: (s: GmdStatus) => boolean, timeoutMs: number): Promise<GmdStatus | null> {
  const deadline = Date.now() + timeoutMs;
  let s: GmdStatus | null = null;
  while (Date.now() < deadline) {
    s = await hostStatus(runDir);
    if (s && ok(s)) return s;
    await new Promise((r) => setTimeout(r, 300));
  }
  return null;
}

/**
 * Boot 1 of both cases: boots the guest on its job, and once `ready` shows on the console starts the
 * host writer on `uri` and runs `workload` with it; then the power cut (SIGKILL of qemu), also when
 * the workload failed. Returns the boot, the writer (still connected) and the workload's error.
 */
async function bootWriteAndCut(o: {
  ws: { dir: string; job: string; images: VmImages; track: (c: ChildProcess) => void; tag: string; dataDisk: string };
  udpIn: Array<{ guest: number; host: number }>; tcpIn?: Array<{ guest: number; host: number }>;
  ready: string; uri: string; workload: (w: PlainWriter) => Promise<void>;
}): Promise<{ res: BootResult; writer: PlainWriter | undefined; error: Error | null }> {
  const { dir, job, images, track, tag, dataDisk } = o.ws;
  let qemu: ChildProcess | undefined;
  let writer: PlainWriter | undefined;
  let drive: Promise<void> | undefined;
  let text = '';
  const res = await bootVm({
    images, jobDir: job, workDir: join(dir, 'vm1'), timeoutMs: 240_000, jobSpaceMb: 64, dataDisk, udpIn: o.udpIn,
    ...(o.tcpIn ? { tcpIn: o.tcpIn } : {}),
    track: (c) => { qemu = c; track(c); },
    onConsole: (d) => {
      text += d;
      if (drive || !text.includes(o.ready)) return;
      drive = (async () => {
        writer = await PlainWriter.start(dir, o.uri, tag, track);
        await o.workload(writer);
      })().finally(() => { qemu?.kill('SIGKILL'); });   // the power cut
    },
  });
  const error = drive ? await drive.then(() => null, (e: unknown) => e as Error) : new Error(`"${o.ready}" never showed on the console`);
  return { res, writer, error };
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

for (const { side, mode, gateMs } of CASES) {
  // The clean gate's flush interval for both GMDs (host env, guest command prefix); 0 = the default.
  const gateEnv: NodeJS.ProcessEnv = gateMs ? { GEORM_GMD_FLUSH_MS: String(gateMs) } : {};
  const gatePrefix = gateMs ? `GEORM_GMD_FLUSH_MS=${gateMs} ` : '';
  const gateLabel = gateMs ? `, clean gate every ${gateMs} ms` : '';
  if (side === 'secondary') t.test(`power cut of the SECONDARY's machine a few seconds after plain writes (${mode}${gateLabel}): identical after rejoin and resync`,
    { skip: powerlossSkip || noLibnbd, timeout: 400_000 }, async (t) => {
    const t0 = Date.now();
    const ws = await powerlossWorkspace(t, 'georm-vm-pll-');
    const { dir, job, images, track, tag, dataDisk } = ws;
    // alpha (guest) is the secondary, beta (host) the primary.
    const { pair, hostCfg, udpIn } = await setupVmPair(dir, job, { mode, alphaVolume: '/data/alpha.img', alphaMap: '/data/alpha.map',
      betaSizeMb: VOLUME_MB, alphaRole: 'secondary', promoteFailureTimeout: PROMOTE_FAILURE_S, resyncRateLimit: '1M' });
    const primary = runHostBeta(hostCfg, pair.beta.runDir, track, ['--start', '--down', 'alpha'], gateEnv);
    await primary.available();
    const nbdUri = `nbd+unix:///vm0gmd?socket=${pair.beta.nbdListen[0]!.slice('unix:'.length)}`;
    const fail = (res: BootResult, name: string, what: string): void => failBoot(t, res, name, what, primary.log());

    // --- boot 1: the secondary joins, set P1 is mirrored, the guest loses power ------------------
    writeFileSync(join(job, 'run.sh'), `set -e
${dataDiskSetup()}${gatePrefix}node /job/georm/bin/georm.js gmd run vm0gmd --config /job/georm.toml --machine alpha --start >/tmp/gmd.out 2>/tmp/gmd.err &
node /job/ctl.mjs wait-active 120
sleep 600
`);
    const timing: Record<string, number> = {};
    const { res: res1, writer, error } = await bootWriteAndCut({ ws, udpIn, ready: 'OK alpha mirroring', uri: nbdUri, workload: async (w) => {
      // P1 above P2: the resync (ascending, its first window of 32 chunks = 256 regions at once, then
      // throttled to 1 MiB/s) takes up P1's regions only seconds after the rejoin, well after the
      // application FLUSH that follows it, which must not have cleaned them meanwhile.
      timing.p1 = await w.write('P1', 3000, 256, 256);
      const s = await hostStatus(pair.beta.runDir);
      t.comment(`primary after P1: ${JSON.stringify({ active: s?.peers.some((p) => p.active), map: s?.map, unflushedRegions: s?.stats?.unflushedRegions })}`);
      // Long enough for the writes to be settled on both sides, far below the guest's 30 s writeback.
      await sleep(3000);
    } });
    timing.boot1 = Date.now() - t0;
    if (error || !writer) { fail(res1, `powerloss-lazy-sec-${mode}-boot1`, `the workload never reached the cut: ${error?.message}`); return; }
    t.equal(res1.exitCode, null, 'the guest was cut off mid-run (power cut)');
    await reportLoss(t, dataDisk, pair.beta.volume, join(dir, 'alpha-cut.img'), tag);

    // --- the primary goes on alone: it drops the silent peer, set P2 is marked stale ------------------
    timing.p2 = await writer.write('P2', 500, 0, 256, 120_000);
    const alone = await waitHost(pair.beta.runDir, (s) => !s.peers.some((p) => p.active), 30_000);
    t.ok(alone, 'the primary dropped the peer whose machine lost power');
    t.ok((alone?.map?.stale ?? 0) > 0, `the primary marks the regions written since (map ${JSON.stringify(alone?.map)})`);

    // --- boot 2: the secondary starts again and rejoins; the primary resyncs -------------------------
    writeFileSync(join(job, 'run.sh'), `set -e
mkdir -p /data /tmp/run
mount /dev/vdc /data
node /job/georm/bin/georm.js gmd run vm0gmd --config /job/georm.toml --machine alpha >/tmp/gmd.out 2>/tmp/gmd.err &
GEORM_PID=$!
node /job/ctl.mjs before
node /job/ctl.mjs start
node /job/ctl.mjs wait-peer-gone 240
kill -TERM $GEORM_PID
set +e; wait $GEORM_PID; rc=$?; set -e
echo "GMD-EXIT $rc"
umount /data
echo "OK data unmounted"
`);
    let synced: Promise<{ s: GmdStatus | null; code: number | null }> | undefined;
    let console2 = '';
    const t2 = Date.now();
    const res2 = await bootVm({
      images, jobDir: job, workDir: join(dir, 'vm2'), timeoutMs: 300_000, jobSpaceMb: 64, dataDisk, udpIn, track,
      onConsole: (d) => {
        console2 += d;
        if (synced || !console2.includes('OK alpha started')) return;
        // In sync = mirroring again with a clean map and no resync left; then the primary stops,
        // which tells the secondary, whose job then stops its GMD and unmounts.
        synced = (async () => {
          // An application FLUSH right after the rejoin, while the resync is still copying: it must
          // not count writes from before the drop as flushed on the new peer (it never got them).
          await writer.flush().catch((e: unknown) => t.comment(`flush after the rejoin failed: ${(e as Error).message}`));
          const f = await hostStatus(pair.beta.runDir);
          t.comment(`primary right after that flush: ${JSON.stringify({ map: f?.map, resyncDone: f?.resync?.doneBytes, resyncLeft: f?.resync?.leftBytes })}`);
          const s = await waitHost(pair.beta.runDir, (x) => x.peers.some((p) => p.active) && !!x.map && x.map.stale === 0
            && x.map.inconsistent === 0 && (!x.resync || !!x.resync.complete || x.resync.leftBytes === 0), 180_000);
          return { s, code: await stopProcess(primary.child, 'SIGTERM', 15_000) };
        })();
      },
    });
    const sync = await synced;
    await writer.stop();
    timing.boot2 = Date.now() - t2;
    if (res2.exitCode !== 0) { fail(res2, `powerloss-lazy-sec-${mode}-boot2`, `recovery boot failed (exit ${res2.exitCode}${res2.timedOut ? ', timed out' : ''})`); return; }
    const before = markers(res2.console, 'MAPBEFORE')[0] ?? [];
    t.comment(`secondary's map after the cut: ${before.join(' ')}`);
    t.ok(sync?.s, `the secondary rejoined and the resync finished (${JSON.stringify(sync?.s?.map)}, resync ${JSON.stringify(sync?.s?.resync)})`);
    t.equal(sync?.code, 0, 'the primary stopped cleanly');
    t.match(res2.console, /GMD-EXIT 0/, 'the secondary stopped cleanly');

    const alphaVol = join(dir, 'alpha.img');
    await dumpJobFile(dataDisk, '/alpha.img', alphaVol);
    compareVolumes(t, pair.beta.volume, alphaVol, tag, 'primary (host) vs secondary (guest)');
    t.comment(`times (ms): ${JSON.stringify({ ...timing, total: Date.now() - t0 })}`);
    if (!t.passing()) t.comment(`consoles kept at ${keepArtifact(res1.consoleLog, `powerloss-lazy-sec-${mode}-boot1`)} and ${keepArtifact(res2.consoleLog, `powerloss-lazy-sec-${mode}-boot2`)}`);
  });

  if (side === 'primary') t.test(`power cut of the PRIMARY's machine after lazy cleaning of plain writes (${mode}${gateLabel}): identical after resync`,
    { skip: powerlossSkip || noLibnbd, timeout: 400_000 }, async (t) => {
    const t0 = Date.now();
    const ws = await powerlossWorkspace(t, 'georm-vm-plp-');
    const { dir, job, images, track, tag, dataDisk } = ws;
    const NBD_GUEST_PORT = 10809;
    const nbdHostPort = await freePort();
    const { pair, hostCfg, udpIn } = await setupVmPair(dir, job, { mode, alphaVolume: '/data/alpha.img', alphaMap: '/data/alpha.map',
      betaSizeMb: VOLUME_MB, alphaNbdListen: [`tcp://0.0.0.0:${NBD_GUEST_PORT}`] });
    const beta = runHostBeta(hostCfg, pair.beta.runDir, track, ['--start', '--down', 'alpha'], gateEnv);
    await beta.available();
    const fail = (res: BootResult, name: string, what: string): void => failBoot(t, res, name, what, beta.log());

    // --- boot 1: set A, idle past the activity log, set B to new regions, power cut ---------------
    writeFileSync(join(job, 'run.sh'), `set -e
${dataDiskSetup()}${gatePrefix}node /job/georm/bin/georm.js gmd run vm0gmd --config /job/georm.toml --machine alpha --start >/tmp/gmd.out 2>/tmp/gmd.err &
GEORM_PID=$!
${gmdWaitAttached()}echo "OK ready for the host writer"
sleep 600
`);
    const timing: Record<string, number> = {};
    const { res: res1, writer, error } = await bootWriteAndCut({ ws, udpIn, tcpIn: [{ guest: NBD_GUEST_PORT, host: nbdHostPort }],
      ready: 'OK ready for the host writer', uri: `nbd://127.0.0.1:${nbdHostPort}/vm0gmd`, workload: async (w) => {
        const w0 = Date.now();
        timing.a = await w.write('A', 2000, 0, 250);
        // Activity log: idle 5 s (5 ticks after the referenced bit clears) + 1 s writer period.
        await sleep(9000);
        timing.b = await w.write('B', 200, 256, 64);
        // The guest's dirty pages of set A are at most ~20 s old here: nothing was written back.
        await sleep(1000);
        timing.cutAfterFirstWrite = Date.now() - w0;
      } });
    await writer?.stop();
    timing.boot1 = Date.now() - t0;
    if (error) { fail(res1, 'powerloss-lazy-pri-boot1', `the workload never reached the cut: ${error.message}`); return; }
    t.equal(res1.exitCode, null, 'the guest was cut off mid-run (power cut)');
    // Not an assertion (no timing assertions): past ~30 s the guest may have written set A back, and
    // the case would pass without probing anything.
    t.comment(`the cut came ${timing.cutAfterFirstWrite} ms after the first write of set A (the guest writes dirty pages back after 30 s)`);
    await reportLoss(t, dataDisk, pair.beta.volume, join(dir, 'alpha-cut.img'), tag);

    // --- boot 2: map loads, start with gmddown, the secondary rejoins, resync, stop ---------------
    const t2 = Date.now();
    const { res: res2, betaStart, betaCode } = await recoverGuestPrimary({
      images, job, workDir: join(dir, 'vm2'), dataDisk, volumeMb: VOLUME_MB, hostCfg, beta: beta.child, udpIn, track,
    });
    timing.boot2 = Date.now() - t2;
    if (res2.exitCode !== 0) { fail(res2, 'powerloss-lazy-pri-boot2', `recovery boot failed (exit ${res2.exitCode}${res2.timedOut ? ', timed out' : ''}); beta start: ${betaStart?.stdout}${betaStart?.stderr}`); return; }
    t.equal(betaStart?.code, 0, 'the secondary started again and rejoined');
    t.comment(`primary's map after the cut: ${(markers(res2.console, 'MAPBEFORE')[0] ?? []).join(' ')}`);
    t.match(res2.console, /OK in sync/, 'resync finished: both maps clean');
    t.match(res2.console, /EXPORT-EXIT 0/, 'the restarted primary stopped cleanly');
    t.equal(betaCode, 0, 'the secondary stopped cleanly');

    const alphaVol = join(dir, 'alpha.img');
    await dumpJobFile(dataDisk, '/alpha.img', alphaVol);
    compareVolumes(t, alphaVol, pair.beta.volume, tag, 'primary (guest) vs secondary (host)');
    t.comment(`times (ms): ${JSON.stringify({ ...timing, total: Date.now() - t0 })}`);
    if (!t.passing()) t.comment(`consoles kept at ${keepArtifact(res1.consoleLog, 'powerloss-lazy-pri-boot1')} and ${keepArtifact(res2.consoleLog, 'powerloss-lazy-pri-boot2')}`);
  });
}

/**
 * gmdsizing against known write rates: fio writes a loop device at 20 MiB/s, then at 60 MiB/s
 * (fio's rate=); gmdsizing, sampling the loop device every 2 s (fio's limiter bursts over 1 s windows), must see those rates and the total
 * within 10 %, and draw the plot.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { readFileSync, readdirSync, existsSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { GEORM_BIN, missingTools, needsRoot, tempDir } from '../helpers/env.js';
import { runCmd } from '../helpers/proc.js';

const MiB = 1024 * 1024;
const median = (v: number[]) => { const s = [...v].sort((a, b) => a - b); return s.length ? (s[(s.length - 1) >> 1]! + s[s.length >> 1]!) / 2 : NaN; };
const within = (v: number, want: number, tol = 0.1) => Math.abs(v - want) <= want * tol;

interface Iv { start: number; seconds: number; writeBytes: number; writeRate: number }
interface Report {
  sources: Array<{ name: string; intervals: Iv[] }>;
  total: { writeBytes: number; peakWriteRate: number; averageWriteRate: number; seconds: number };
  advice: { syncMwcLink: number; asyncLink: number; hwmForAsyncLink: number; link: { maxBacklogBytes: number; enoughForSyncMwc: boolean } };
}

t.test('gmdsizing sees fio\'s 20 MiB/s and 60 MiB/s on a loop device within 10 %', { skip: needsRoot() || missingTools('fio', 'losetup') }, async (t) => {
  const { dir, cleanup } = tempDir('georm-sizing-');
  t.teardown(cleanup);
  const img = join(dir, 'disk.img');
  const fh = await open(img, 'w');
  await fh.truncate(256 * MiB);
  await fh.close();
  const lo = await runCmd('losetup', ['--find', '--show', img]);
  t.equal(lo.code, 0, lo.stderr);
  const loop = lo.stdout.trim();
  t.teardown(async () => { await runCmd('losetup', ['-d', loop]); });

  const plot = join(dir, 'rate.svg');
  // -F with the device node: the file-to-device lookup (stat rdev -> /proc/diskstats) finds it.
  const sizing = spawn(process.execPath, [GEORM_BIN, 'gmdsizing', '-i', '2', '-t', '10m', '-F', loop, '--json', '--bandwidth', '400Mbit', '--plot', plot], { stdio: ['ignore', 'pipe', 'pipe'] });
  t.teardown(() => { if (sizing.exitCode === null) sizing.kill('SIGKILL'); });
  let out = '', err = '';
  sizing.stdout!.on('data', (d: Buffer) => { out += d.toString(); });
  sizing.stderr!.on('data', (d: Buffer) => { err += d.toString(); });
  const exited = new Promise<number | null>((r) => sizing.once('exit', (c) => r(c)));
  // fio starts only once gmdsizing has taken its first counters (it says so on stderr).
  for (let k = 0; k < 300 && !/sampling/.test(err); k++) await new Promise((r) => setTimeout(r, 100));
  t.match(err, /sampling 1 source every 2 s/, 'gmdsizing announced its sampling');
  // fio logs its own bandwidth averaged over 2 s windows: its limiter bursts after a stall on a busy
  // machine, and gmdsizing's peak is judged against the peak fio itself wrote.
  const bwLog = ['--write_bw_log=' + join(dir, 'fio'), '--log_avg_msec=2000'];
  const fio = await runCmd('fio', ['--output-format=json', ...bwLog, '--name=slow', `--filename=${loop}`, '--rw=write', '--bs=64k', '--direct=1', '--ioengine=psync',
    '--rate=20m', '--time_based', '--runtime=8', '--size=200m',
    '--name=fast', '--stonewall', `--filename=${loop}`, '--rw=write', '--bs=64k', '--direct=1', '--ioengine=psync', '--rate=60m', '--time_based', '--runtime=8', '--size=200m'], { timeoutMs: 60000 });
  t.equal(fio.code, 0, fio.stderr);
  const jobs = (JSON.parse(fio.stdout) as { jobs: Array<{ jobname: string; write: { io_bytes: number; bw_bytes: number } }> }).jobs;
  const fioBytes = jobs.reduce((a, j) => a + j.write.io_bytes, 0);
  // Interrupted (as an administrator ends a run with ^C), gmdsizing still reports what it sampled.
  await new Promise((r) => setTimeout(r, 2500));
  sizing.kill('SIGINT');
  t.equal(await exited, 0, `gmdsizing exit: ${err}`);
  const r = JSON.parse(out) as Report;
  const iv = r.sources[0]!.intervals;
  t.ok(iv.length >= 9 && iv.length < 300, `${iv.length} intervals sampled until interrupted`);
  t.ok(within(r.total.writeBytes, fioBytes), `total written ${r.total.writeBytes} within 10% of fio's ${fioBytes}`);
  // Intervals wholly inside one phase; the ones straddling a phase change fall between the buckets.
  const slow = iv.filter((i) => i.writeRate > 12 * MiB && i.writeRate < 30 * MiB).map((i) => i.writeRate);
  const fast = iv.filter((i) => i.writeRate > 45 * MiB).map((i) => i.writeRate);
  t.ok(slow.length >= 2, `${slow.length} intervals in the 20 MiB/s phase`);
  t.ok(fast.length >= 2, `${fast.length} intervals in the 60 MiB/s phase`);
  t.ok(within(median(slow), 20 * MiB), `20 MiB/s phase: ${(median(slow) / MiB).toFixed(2)} MiB/s (fio reported ${(jobs[0]!.write.bw_bytes / MiB).toFixed(2)})`);
  t.ok(within(median(fast), 60 * MiB), `60 MiB/s phase: ${(median(fast) / MiB).toFixed(2)} MiB/s (fio reported ${(jobs[1]!.write.bw_bytes / MiB).toFixed(2)})`);
  const fioPeak = Math.max(...readdirSync(dir).filter((f) => /^fio_bw\..*log$/.test(f))
    .flatMap((f) => readFileSync(join(dir, f), 'utf8').trim().split('\n').map((l) => Number(l.split(',')[1]) * 1024)));
  t.comment(`fio's own 2 s peak: ${(fioPeak / MiB).toFixed(2)} MiB/s (its limiter catches up after stalls on a loaded machine)`);
  // fio's windows and gmdsizing's are not aligned: a burst fio logs may be split over two of ours.
  t.ok(within(r.total.peakWriteRate, fioPeak) || within(r.total.peakWriteRate, 60 * MiB), `peak ${(r.total.peakWriteRate / MiB).toFixed(2)} MiB/s within 10% of fio's logged ${(fioPeak / MiB).toFixed(2)} or its 60 MiB/s rate`);
  t.ok(within(r.total.averageWriteRate, fioBytes / r.total.seconds), `average ${(r.total.averageWriteRate / MiB).toFixed(2)} MiB/s = fio's bytes over the sampled time`);
  // The advice follows from those numbers: sync/mwc need the peak, async the average, at 90 % efficiency.
  t.ok(within(r.advice.syncMwcLink, r.total.peakWriteRate / 0.9, 0.001), 'sync/mwc link = peak / 0.9');
  t.ok(within(r.advice.asyncLink, r.total.averageWriteRate / 0.9, 0.001), 'async link = average / 0.9');
  t.ok(r.advice.hwmForAsyncLink > 0, `HWM to absorb the peaks on an average-rate link: ${(r.advice.hwmForAsyncLink / MiB).toFixed(1)} MiB`);
  t.equal(r.advice.link.enoughForSyncMwc, false, '400 Mbit/s (42.9 MiB/s of payload) cannot carry the 60 MiB/s peak in sync/mwc');
  // In the 8 s at 60 MiB/s the link falls behind by about 17 MiB/s: some 137 MiB of backlog.
  const excess = (60 - 400e6 / 8 * 0.9 / MiB) * MiB;
  // 2 s samples smear the phase edges (an interval half in each phase may stay under the link), so
  // the backlog seen lies between 5 and 10 s worth of that excess, and follows the samples exactly.
  t.ok(r.advice.link.maxBacklogBytes > excess * 5 && r.advice.link.maxBacklogBytes < excess * 10, `backlog ${(r.advice.link.maxBacklogBytes / MiB).toFixed(1)} MiB ≈ 8 s x ${(excess / MiB).toFixed(1)} MiB/s`);
  let queue = 0, worst = 0;
  for (const i of iv) { queue = Math.max(0, queue + i.writeBytes - 400e6 / 8 * 0.9 * i.seconds); worst = Math.max(worst, queue); }
  t.ok(Math.abs(worst - r.advice.link.maxBacklogBytes) < 1, 'backlog = the queue the reported samples build on that link');
  t.ok(existsSync(plot), 'plot written');
  const svg = readFileSync(plot, 'utf8');
  t.match(svg, /<svg [^>]*xmlns="http:\/\/www\.w3\.org\/2000\/svg"/);
  t.match(svg, /<polyline [^>]*points="[\d.,\s]+"/, 'write-rate line drawn');
  t.match(svg, /link payload capacity 42\.9 MiB\/s/, 'link capacity line labelled (400 Mbit/s x 0.9)');
});

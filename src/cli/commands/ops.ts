/**
 * Operations verbs: `georm metrics` (Prometheus endpoint), and the planning tools. Each verb's work
 * lives in src/ops/; this file only parses switches and prints.
 */
import type { Command } from 'commander';
import { GeormError } from '../../util/errors.js';
import { parseListen, startMetricsServer } from '../../ops/metrics-server.js';
import { writeFile } from 'node:fs/promises';
import { advise, combine, diskSource, fileSource, formatReport, gmdSource, sample, summarize, type Source } from '../../ops/sizing.js';
import { plotSvg } from '../../ops/svg-plot.js';
import { GEOMESSAGE_EFFICIENCY, efficiencyFor, formatBits, formatRate, formatSeconds, parseBandwidth, parseDuration } from '../../ops/units.js';
import { estimateSync } from '../../ops/estimate-sync.js';
import { callControl } from '../../gmd/control.js';
import { defaultMachine } from '../../gmd/runner.js';
import type { GmdStatus } from '../../gmd/device/index.js';
import { parseSize, formatSize } from '../../util/size.js';
import { join } from 'node:path';

const DEFAULT_RUN_DIR = process.env.GEORM_RUN_DIR ?? '/run/georm';

function positiveNumber(name: string, v: string): number {
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) throw new GeormError('GEORM_ERR_USAGE', `${name} must be a positive number, got '${v}'`);
  return n;
}

function registerMetrics(program: Command): void {
  program.command('metrics')
    .description('serve a Prometheus scrape endpoint (GET /metrics) for every GMD running on this machine')
    .requiredOption('--listen <host:port>', 'address to serve on, e.g. 127.0.0.1:9942 or [::]:9942')
    .option('--run-dir <dir>', 'where the GMDs put their control sockets (<gmd>.sock)', DEFAULT_RUN_DIR)
    .option('--machine <name>', 'this machine\'s name in the cluster file, for GMDs that do not answer (default: $GEORM_MACHINE or the host name)')
    .option('--probe-timeout <seconds>', 'how long one GMD may take to answer before it is reported as down (georm_gmd_up 0)', '2')
    .addHelpText('after', '\nThe series and their meaning: README "Monitoring and planning"; alert rules: docs/prometheus-alerts.yml.')
    .action(async (o: { listen: string; runDir: string; probeTimeout: string; machine?: string }) => {
      const { host, port } = parseListen(o.listen);
      const { server, address } = await startMetricsServer({ host, port, runDir: o.runDir, machine: defaultMachine(o.machine), probeTimeoutMs: positiveNumber('--probe-timeout', o.probeTimeout) * 1000 });
      process.stdout.write(`georm metrics: serving http://${address}/metrics for the GMDs in ${o.runDir}\n`);
      const stop = () => { server.close(); server.closeAllConnections(); };
      process.once('SIGTERM', stop);
      process.once('SIGINT', stop);
      await new Promise((r) => server.once('close', r));
    });
}

const collect = (v: string, prev: string[] = []) => [...prev, v];

interface SizingOpts {
  interval: string; time?: string; count?: string; pv: string[]; gmd: string[]; file: string[]; runDir: string;
  output?: string; verbose?: boolean; json?: boolean; bandwidth?: string; mtu: string; plot?: string;
}

function registerSizing(program: Command): void {
  program.command('gmdsizing')
    .description('sample write activity of disks, GMDs or a file\'s device and report the bandwidth, HWM and backlog georm would need (seed 3.7.1)')
    .option('-i, --interval <time>', 'sampling interval (seconds, or with s/m/h/d)', '60')
    .option('-t, --time <time>', 'how long to sample (seconds, or with s/m/h/d: 24h, 5d); default until interrupted')
    .option('-c, --count <n>', 'number of intervals (instead of --time)')
    .option('-p, --pv <device>', 'block device to monitor (sda, nvme0n1, loop3, /dev/sdb); repeatable', collect, [])
    .option('-g, --gmd <name>', 'running GMD to monitor (application writes, from its statistics); repeatable', collect, [])
    .option('-F, --file <path>', 'monitor the block device holding this file; repeatable', collect, [])
    .option('--run-dir <dir>', 'where the GMDs put their control sockets', DEFAULT_RUN_DIR)
    .option('-f, --output <file>', 'write the report to this file instead of stdout')
    .option('-V, --verbose', 'add what the numbers mean for georm (bandwidth per mode, HWM, backlog)')
    .option('--bandwidth <bw>', 'link to judge against: 100Mbit, 1Gbit (bits/s) or 12MB/s')
    .option('--mtu <bytes>', `geographic network MTU: GeoMessage carries ${GEOMESSAGE_EFFICIENCY.mtu1500 * 100}% of the link as payload at 1500, ${GEOMESSAGE_EFFICIENCY.mtu9000 * 100}% at 9000`, '1500')
    .option('--plot <file.svg>', 'draw the write rate over time against the link capacity')
    .option('--json', 'print intervals, totals and advice as JSON')
    .addHelpText('after', '\nExample (seed): georm gmdsizing -i 1m -t 5m -p sda -V --bandwidth 100Mbit --plot /tmp/sda.svg\n' +
      'The seed\'s -v volume group has no equivalent: give the VG\'s physical volumes with -p, or its LVs (dm-N).')
    .action(async (o: SizingOpts) => {
      const interval = parseDuration(o.interval, '--interval');
      if (o.time !== undefined && o.count !== undefined) throw new GeormError('GEORM_ERR_USAGE', 'give --time or --count, not both');
      let count = Infinity;
      if (o.time !== undefined) count = Math.max(1, Math.round(parseDuration(o.time, '--time') / interval));
      if (o.count !== undefined) {
        count = Number(o.count);
        if (!Number.isInteger(count) || count < 1) throw new GeormError('GEORM_ERR_USAGE', `--count must be a positive integer, got '${o.count}'`);
      }
      const bandwidth = o.bandwidth === undefined ? undefined : parseBandwidth(o.bandwidth);
      const mtu = positiveNumber('--mtu', o.mtu);
      const sources: Source[] = [
        ...await Promise.all(o.pv.map((d) => diskSource(d))),
        ...await Promise.all(o.gmd.map((g) => gmdSource(o.runDir, g).catch((e: Error) => { throw new GeormError('GEORM_ERR_USAGE', `-g ${g}: ${e.message}`); }))),
        ...await Promise.all(o.file.map((f) => fileSource(f))),
      ];
      if (!sources.length) throw new GeormError('GEORM_ERR_USAGE', 'nothing to monitor: give -p DEVICE, -g GMD or -F FILE');
      // Interrupting ends sampling early and still prints the report (as the seed's gmdsizing does).
      let interrupt: () => void = () => undefined;
      const stop = new Promise<void>((r) => { interrupt = r; });
      process.once('SIGINT', interrupt);
      process.once('SIGTERM', interrupt);
      const all = await sample(sources, interval, count, stop, () => process.stderr.write(
        `gmdsizing: sampling ${sources.length} source${sources.length > 1 ? 's' : ''} every ${interval} s${Number.isFinite(count) ? ` for ${count} intervals` : ''}; interrupt (^C) to end early and report\n`));
      process.off('SIGINT', interrupt);
      process.off('SIGTERM', interrupt);
      const summaries = all.map((s) => summarize(s.name, s.intervals));
      const totalIv = combine(all);
      const total = summarize('total', totalIv);
      const eff = efficiencyFor(mtu);
      const adv = advise(totalIv, total, eff, bandwidth);
      const text = o.json
        ? JSON.stringify({ interval, sources: all, summaries, total, advice: adv })
        : formatReport(all, summaries, total, adv, !!o.verbose || bandwidth !== undefined);
      if (o.plot) await writeFile(o.plot, plotSvg(`gmdsizing: ${all.map((s) => s.name).join(' + ')}`, totalIv, bandwidth === undefined ? undefined : bandwidth * eff, total.averageWriteRate));
      if (o.output) await writeFile(o.output, text + '\n');
      else process.stdout.write(text + '\n');
    });
}

interface EstimateOpts {
  size?: string; gmd?: string; stale?: string; bandwidth: string; rtt: string; mtu: string; rateLimit?: string;
  syncRate: string; regionSize: string; runDir: string; json?: boolean;
}

function registerEstimateSync(program: Command): void {
  program.command('estimate-sync')
    .description('how long a full initial sync and a resync of stale data take on a link (seed 3.8)')
    .option('--size <bytes>', 'device size for the full sync (64G, 2T)')
    .option('--gmd <name>', 'take size, stale bytes, sync_rate, region_size and resync_rate_limit from this running GMD')
    .option('--stale <bytes>', 'stale bytes to resync (default with --gmd: its stale regions)')
    .requiredOption('--bandwidth <bw>', 'link: 100Mbit, 1Gbit (bits/s) or 12MB/s')
    .option('--rtt <ms>', 'round-trip time of the link in milliseconds', '0')
    .option('--mtu <bytes>', `geographic network MTU (resync efficiency ${GEOMESSAGE_EFFICIENCY.mtu1500 * 100}% at 1500, ${GEOMESSAGE_EFFICIENCY.mtu9000 * 100}% at 9000)`, '1500')
    .option('--rate-limit <bw>', 'resync_rate_limit (12MB/s, 100Mbit; 0 = unlimited); default with --gmd: its attribute, else 0')
    .option('--sync-rate <bytes>', 'sync_rate, bytes per resync request', '256K')
    .option('--region-size <bytes>', 'state-map region size', '32K')
    .option('--run-dir <dir>', 'where the GMDs put their control sockets', DEFAULT_RUN_DIR)
    .option('--json', 'print the estimate as JSON')
    .action(async (o: EstimateOpts) => {
      if ((o.size === undefined) === (o.gmd === undefined)) throw new GeormError('GEORM_ERR_USAGE', 'give exactly one of --size SIZE or --gmd NAME');
      let size: number, stale = o.stale === undefined ? undefined : parseSize(o.stale, '--stale');
      let syncRate = parseSize(o.syncRate, '--sync-rate'), regionSize = parseSize(o.regionSize, '--region-size');
      let rateLimit = o.rateLimit === undefined || o.rateLimit === '0' ? 0 : parseBandwidth(o.rateLimit, '--rate-limit');
      if (o.gmd !== undefined) {
        const st = await callControl(join(o.runDir, `${o.gmd}.sock`), 'status', {}, 10000) as GmdStatus;
        size = st.size;
        if (st.attrs) {
          regionSize = st.attrs.regionSize;
          syncRate = st.attrs.syncRate;
          if (o.rateLimit === undefined) rateLimit = st.attrs.resyncRateLimit;
        }
        if (stale === undefined && st.map) stale = Math.min(size, st.map.stale * regionSize);
      } else size = parseSize(o.size!, '--size');
      if (!(size > 0)) throw new GeormError('GEORM_ERR_USAGE', 'the size must be more than 0 bytes');
      const rttMs = Number(o.rtt);
      if (!Number.isFinite(rttMs) || rttMs < 0) throw new GeormError('GEORM_ERR_USAGE', `--rtt must be a number of milliseconds >= 0, got '${o.rtt}'`);
      const bandwidth = parseBandwidth(o.bandwidth);
      const efficiency = efficiencyFor(positiveNumber('--mtu', o.mtu));
      const e = estimateSync({ size, stale, bandwidth, rttMs, efficiency, rateLimit, syncRate, regionSize });
      if (o.json) {
        process.stdout.write(JSON.stringify({ size, stale: stale ?? null, bandwidth, rttMs, efficiency, rateLimit, syncRate, regionSize, ...e }) + '\n');
        return;
      }
      const why = e.limitedBy === 'link' ? `the link (${formatBits(bandwidth)} x ${efficiency * 100}% GeoMessage efficiency, measured by bench:gmd)`
        : e.limitedBy === 'rtt' ? `the round trip (${formatSize(e.windowBytes)} in flight / ${rttMs} ms)` : `resync_rate_limit (${formatRate(rateLimit)})`;
      const lines = [
        `resync rate: ${formatRate(e.rate)}, limited by ${why}`,
        `full initial sync of ${formatSize(size)}: ${formatSeconds(e.fullSeconds)}`,
      ];
      if (e.staleSeconds !== null) lines.push(`resync of ${formatSize(stale!)} stale: ${formatSeconds(e.staleSeconds)}`);
      if (e.limitedBy === 'resync_rate_limit') lines.push(`without resync_rate_limit the full sync would take ${formatSeconds(e.fullSecondsUnlimited)} (the limit leaves the rest of the link to application writes)`);
      process.stdout.write(lines.join('\n') + '\n');
    });
}

export function register(program: Command): void {
  registerMetrics(program);
  registerSizing(program);
  registerEstimateSync(program);
}

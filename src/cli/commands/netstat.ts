import { readFile } from 'node:fs/promises';
import { Command, Option } from 'commander';
import { GeormError } from '../../util/errors.js';
import { findNetStatSockets, formatNetStats, readNetStats } from '../../tools/netstat.js';
import type { GeoMessageStats } from '../../geomessage/stats.js';

const DEFAULT_RUN_DIR = process.env.GEORM_RUN_DIR ?? '/run/georm';

interface NetStatOpts {
  summary?: boolean; machine?: string[]; network?: string[]; interval?: string; count?: string;
  json?: boolean; source?: string[]; runDir: string; version?: boolean;
}

function positive(name: string, v: string | undefined, dflt: number, integer: boolean): number {
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0 || (integer && !Number.isInteger(n))) {
    throw new GeormError('GEORM_ERR_USAGE', `${name} must be a positive ${integer ? 'integer' : 'number'}, got '${v}'`, { exitCode: 1 });
  }
  return n;
}

/** `georm netstat` (alias `krpcstat`): GeoMessage statistics of running georm processes. */
export function register(program: Command): void {
  program.command('netstat')
    .alias('krpcstat')
    .description('GeoMessage statistics per machine and network (krpcstat). Exit 0 ok, 1 bad switches, 2 not available')
    .option('-s, --summary', 'one line per machine and network')
    .option('-m, --machine <names...>', 'only these peer machines')
    .option('-n, --network <names...>', 'only these networks')
    .option('-i, --interval <seconds>', 'sampling interval (rates over the interval)')
    .option('-c, --count <n>', 'number of intervals to report')
    .option('--json', 'print the raw statistics as JSON, one line per report')
    .option('-v, --version', 'print the georm version and exit')
    .addOption(new Option('--source <paths...>', 'stats sockets (*.netstat.sock) or JSON snapshot files; default: every socket in --run-dir'))
    .option('--run-dir <dir>', 'where georm processes put their stats sockets', DEFAULT_RUN_DIR)
    .addHelpText('after', '\nSwitches follow AIX krpcstat: -s summary, -m machine…, -n network…, -i interval, -c count.\n' +
      'A running GMD serves its statistics on <run-dir>/<gmd>.netstat.sock.')
    .action(async (o: NetStatOpts) => {
      if (o.version) {
        const pkg = JSON.parse(await readFile(new URL('../../../../package.json', import.meta.url), 'utf8')) as { version: string };
        process.stdout.write(`georm netstat (krpcstat) ${pkg.version}\n`);
        return;
      }
      if (o.count !== undefined && o.interval === undefined && Number(o.count) > 1) {
        throw new GeormError('GEORM_ERR_USAGE', '-c needs -i (the interval between reports)', { exitCode: 1 });
      }
      const interval = positive('-i', o.interval, 1, false);
      const count = positive('-c', o.count, 1, true);
      const sources = o.source?.length ? o.source : await findNetStatSockets(o.runDir);
      if (!sources.length) throw new GeormError('GEOMSG_ERR_STATS_UNAVAILABLE', `no GeoMessage statistics found in ${o.runDir} (is a GMD running?)`, { exitCode: 2 });
      const read = () => Promise.all(sources.map((s) => readNetStats(s)));
      let prev: GeoMessageStats[] | null = null;
      if (o.interval !== undefined) prev = await read();
      for (let k = 0; k < count; k++) {
        if (o.interval !== undefined) await new Promise((r) => setTimeout(r, interval * 1000));
        const now = await read();
        checkFilters(now, o);
        for (const [i, s] of now.entries()) {
          if (o.json) process.stdout.write(JSON.stringify(s) + '\n');
          else process.stdout.write(formatNetStats(s, {
            summary: o.summary === true, machines: o.machine ?? [], networks: o.network ?? [], ...(prev ? { previous: prev[i]! } : {}),
          }) + '\n');
        }
        prev = now;
      }
    });
}

/** -m / -n naming something no process knows is "information not available" (exit 2). */
function checkFilters(stats: GeoMessageStats[], o: NetStatOpts): void {
  for (const m of o.machine ?? []) {
    if (!stats.some((s) => s.machines.some((x) => x.machine === m))) {
      throw new GeormError('GEOMSG_ERR_STATS_UNAVAILABLE', `no statistics for machine ${m}`, { exitCode: 2 });
    }
  }
  for (const n of o.network ?? []) {
    if (!stats.some((s) => s.networks.some((x) => x.network === n))) {
      throw new GeormError('GEOMSG_ERR_STATS_UNAVAILABLE', `no statistics for network ${n}`, { exitCode: 2 });
    }
  }
}

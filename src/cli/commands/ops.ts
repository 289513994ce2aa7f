/**
 * Operations verbs: `georm metrics` (Prometheus endpoint), and the planning tools. Each verb's work
 * lives in src/ops/; this file only parses switches and prints.
 */
import type { Command } from 'commander';
import { GeormError } from '../../util/errors.js';
import { parseListen, startMetricsServer } from '../../ops/metrics-server.js';

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
    .option('--probe-timeout <seconds>', 'how long one GMD may take to answer before it is reported as down (georm_gmd_up 0)', '2')
    .addHelpText('after', '\nThe series and their meaning: README "Monitoring and planning"; alert rules: docs/prometheus-alerts.yml.')
    .action(async (o: { listen: string; runDir: string; probeTimeout: string }) => {
      const { host, port } = parseListen(o.listen);
      const { server, address } = await startMetricsServer({ host, port, runDir: o.runDir, probeTimeoutMs: positiveNumber('--probe-timeout', o.probeTimeout) * 1000 });
      process.stdout.write(`georm metrics: serving http://${address}/metrics for the GMDs in ${o.runDir}\n`);
      const stop = () => { server.close(); server.closeAllConnections(); };
      process.once('SIGTERM', stop);
      process.once('SIGINT', stop);
      await new Promise((r) => server.once('close', r));
    });
}

export function register(program: Command): void {
  registerMetrics(program);
}

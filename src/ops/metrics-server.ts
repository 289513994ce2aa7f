/**
 * `georm metrics`: the HTTP endpoint Prometheus scrapes. Each GET /metrics probes every GMD found in
 * the run directory right then (no background polling, so the numbers are as fresh as the scrape),
 * and always answers 200: a GMD that does not answer shows as georm_gmd_up 0.
 */
import { createServer, type Server } from 'node:http';
import { GeormError } from '../util/errors.js';
import { probeAll } from './gmd-probe.js';
import { GeormMetrics } from './metrics.js';

export interface MetricsServerOptions {
  host: string;
  port: number;
  runDir: string;
  /** This machine's name in the cluster file (labels GMDs that do not answer). */
  machine: string;
  /** How long one GMD may take to answer before it counts as not up. */
  probeTimeoutMs: number;
}

/** `HOST:PORT`, `[v6]:PORT` or `:PORT` (all interfaces); port 0 picks a free one (printed at start). */
export function parseListen(s: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:[\]]*)):(\d{1,5})$/.exec(s.trim());
  const port = m ? Number(m[3]) : NaN;
  if (!m || port < 0 || port > 65535) throw new GeormError('GEORM_ERR_USAGE', `--listen wants HOST:PORT (e.g. 127.0.0.1:9942 or [::1]:9942), not '${s}'`);
  return { host: m[1] ?? (m[2] || '0.0.0.0'), port };
}

export async function startMetricsServer(o: MetricsServerOptions): Promise<{ server: Server; address: string }> {
  const metrics = new GeormMetrics();
  // Scrapes are answered one after the other: the metrics are reset and refilled per scrape.
  let queue: Promise<unknown> = Promise.resolve();
  const scrape = async (): Promise<string> => {
    const t0 = process.hrtime.bigint();
    const probes = await probeAll(o.runDir, o.probeTimeoutMs);
    metrics.update(probes, Number(process.hrtime.bigint() - t0) / 1e9, o.machine);
    return metrics.registry.metrics();
  };
  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') { res.writeHead(405, { Allow: 'GET, HEAD' }).end(); return; }
    if (path === '/metrics') {
      const job = queue.then(scrape);
      queue = job.catch(() => undefined);
      job.then(
        (text) => { res.writeHead(200, { 'Content-Type': metrics.registry.contentType }).end(req.method === 'HEAD' ? undefined : text); },
        (e: unknown) => { res.writeHead(500, { 'Content-Type': 'text/plain' }).end(`georm metrics: ${(e as Error).message}\n`); });
      return;
    }
    if (path === '/') {
      res.writeHead(200, { 'Content-Type': 'text/plain' }).end(`georm metrics for the GMDs in ${o.runDir}: GET /metrics\n`);
      return;
    }
    res.writeHead(404, { 'Content-Type': 'text/plain' }).end('not found\n');
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (e: NodeJS.ErrnoException) => reject(new GeormError(e.code === 'EADDRINUSE' ? 'GEORM_ERR_IN_USE' : 'GEORM_ERR_IO', `cannot listen on ${o.host}:${o.port}: ${e.message}`)));
    server.listen(o.port, o.host, () => resolve());
  });
  const a = server.address();
  const address = a && typeof a === 'object' ? `${a.family === 'IPv6' ? `[${a.address}]` : a.address}:${a.port}` : `${o.host}:${o.port}`;
  return { server, address };
}

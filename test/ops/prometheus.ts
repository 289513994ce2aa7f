/**
 * Test harness: a real Prometheus server on loopback (temporary config and data directory), and
 * `georm metrics` processes for it to scrape. Everything is stopped by pid in `stop()`.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { readFile, writeFile, mkdir } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { GEORM_BIN, ROOT } from '../helpers/env.js';

export async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const port = (s.address() as { port: number }).port;
  await new Promise((r) => s.close(r));
  return port;
}

async function stopChild(c: ChildProcess): Promise<void> {
  if (c.exitCode !== null || c.signalCode !== null) return;
  const gone = once(c, 'exit');
  c.kill('SIGTERM');
  const t = setTimeout(() => c.kill('SIGKILL'), 5000);
  await gone;
  clearTimeout(t);
}

/** `georm metrics --listen 127.0.0.1:0 --run-dir DIR`; resolves with the address it serves on. */
export async function startGeormMetrics(runDir: string, machine = 'testhost'): Promise<{ child: ChildProcess; address: string; stop: () => Promise<void> }> {
  const child = spawn(process.execPath, [GEORM_BIN, 'metrics', '--listen', '127.0.0.1:0', '--run-dir', runDir, '--machine', machine, '--probe-timeout', '0.8'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stderr!.on('data', (d: Buffer) => { err += d.toString(); });
  const address = await new Promise<string>((resolve, reject) => {
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /http:\/\/([^/]+)\/metrics/.exec(out);
      if (m) resolve(m[1]!);
    });
    child.once('exit', (code) => reject(new Error(`georm metrics exited ${code}: ${err}`)));
  });
  return { child, address, stop: () => stopChild(child) };
}

export interface PromQueryResult { metric: Record<string, string>; value: [number, string] }

export class Prometheus {
  private constructor(readonly url: string, private readonly child: ChildProcess, readonly logFile: string) {}

  /** Starts Prometheus scraping `targets` (job name -> host:port) every second, with `rulesYaml` loaded. */
  static async start(dir: string, targets: Record<string, string>, rulesYaml: string): Promise<Prometheus> {
    await mkdir(join(dir, 'data'), { recursive: true });
    await writeFile(join(dir, 'rules.yml'), rulesYaml);
    const cfg = [
      'global:', '  scrape_interval: 1s', '  scrape_timeout: 1s', '  evaluation_interval: 1s',
      'rule_files:', `  - ${join(dir, 'rules.yml')}`,
      'scrape_configs:',
      ...Object.entries(targets).flatMap(([job, addr]) => [`  - job_name: ${job}`, '    static_configs:', `      - targets: ['${addr}']`]),
    ].join('\n') + '\n';
    await writeFile(join(dir, 'prometheus.yml'), cfg);
    const port = await freePort();
    const logFile = join(dir, 'prometheus.log');
    const { openSync, closeSync } = await import('node:fs');
    const fd = openSync(logFile, 'a');
    const child = spawn('prometheus', [
      `--config.file=${join(dir, 'prometheus.yml')}`, `--storage.tsdb.path=${join(dir, 'data')}`,
      `--web.listen-address=127.0.0.1:${port}`, '--storage.tsdb.retention.time=1h',
    ], { stdio: ['ignore', fd, fd] });
    closeSync(fd);
    const p = new Prometheus(`http://127.0.0.1:${port}`, child, logFile);
    const deadline = Date.now() + 60000;
    for (;;) {
      if (child.exitCode !== null) throw new Error(`prometheus exited ${child.exitCode}: ${await readFile(logFile, 'utf8')}`);
      const ok = await fetch(`${p.url}/-/ready`).then((r) => r.ok, () => false);
      if (ok) return p;
      if (Date.now() > deadline) { await p.stop(); throw new Error('prometheus not ready within 60 s'); }
      await new Promise((r) => setTimeout(r, 200));
    }
  }

  async query(expr: string): Promise<PromQueryResult[]> {
    const r = await fetch(`${this.url}/api/v1/query?query=${encodeURIComponent(expr)}`);
    const j = await r.json() as { status: string; error?: string; data: { result: PromQueryResult[] } };
    if (j.status !== 'success') throw new Error(`query ${expr}: ${j.error}`);
    return j.data.result;
  }

  async queryRange(expr: string, startSec: number, endSec: number): Promise<Array<{ metric: Record<string, string>; values: Array<[number, string]> }>> {
    const r = await fetch(`${this.url}/api/v1/query_range?query=${encodeURIComponent(expr)}&start=${startSec}&end=${endSec}&step=1`);
    const j = await r.json() as { status: string; error?: string; data: { result: Array<{ metric: Record<string, string>; values: Array<[number, string]> }> } };
    if (j.status !== 'success') throw new Error(`query_range ${expr}: ${j.error}`);
    return j.data.result;
  }

  async alerts(): Promise<Array<{ labels: Record<string, string>; state: string }>> {
    const r = await fetch(`${this.url}/api/v1/alerts`);
    return (await r.json() as { data: { alerts: Array<{ labels: Record<string, string>; state: string }> } }).data.alerts;
  }

  /** Polls `expr` until `pred` holds for its result. */
  async waitFor(expr: string, pred: (r: PromQueryResult[]) => boolean, what: string, timeoutMs = 60000): Promise<PromQueryResult[]> {
    const deadline = Date.now() + timeoutMs;
    let last: PromQueryResult[] = [];
    for (;;) {
      last = await this.query(expr);
      if (pred(last)) return last;
      if (Date.now() > deadline) throw new Error(`timeout waiting for ${what}: ${expr} = ${JSON.stringify(last)}`);
      await new Promise((r) => setTimeout(r, 500));
    }
  }

  stop(): Promise<void> { return stopChild(this.child); }
}

/** The shipped alert rules with every `for:` shortened to 1 s, for tests. */
export async function testAlertRules(): Promise<string> {
  const text = await readFile(join(ROOT, 'docs/prometheus-alerts.yml'), 'utf8');
  return text.replace(/for: \d+[smh]/g, 'for: 1s');
}

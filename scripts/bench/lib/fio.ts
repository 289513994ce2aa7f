/**
 * A generic fio runner for benchmarks: builds the command line from a job description, runs fio
 * with --output-format=json and returns the figures that matter per direction. Reusable by any
 * benchmark (NBD, GMD, resync): the caller supplies engine-specific options (uri=, filename=, …).
 */
import { spawn } from 'node:child_process';

export type FioValue = string | number | boolean;

export interface FioJob {
  name: string;
  /** fio options without the leading dashes, e.g. { ioengine: 'nbd', uri, rw: 'randwrite', bs: '4k' }. */
  options: Record<string, FioValue>;
  /** Extra environment (e.g. PATH). */
  env?: NodeJS.ProcessEnv;
  /** Kill fio after this long (default: runtime + 60 s). */
  timeoutMs?: number;
}

export interface FioDirection {
  ios: number;
  bytes: number;
  iops: number;
  /** bytes per second */
  bw: number;
  latMeanUs: number;
  latP99Us: number;
}

export interface FioResult {
  name: string;
  read: FioDirection;
  write: FioDirection;
  /** user + system CPU of fio itself, percent of one core */
  cpuPercent: number;
  runtimeMs: number;
  error: number;
  raw: unknown;
}

interface FioJsonDir {
  total_ios: number; io_bytes: number; iops: number; bw_bytes: number; runtime: number;
  clat_ns?: { mean: number; percentile?: Record<string, number> };
  lat_ns?: { mean: number };
}
interface FioJson { jobs: Array<{ jobname: string; error: number; read: FioJsonDir; write: FioJsonDir; usr_cpu: number; sys_cpu: number; job_runtime?: number }> }

export function fioArgs(job: FioJob): string[] {
  const args = [`--name=${job.name}`, '--output-format=json'];
  for (const [k, v] of Object.entries(job.options)) {
    if (v === false) continue;
    args.push(v === true ? `--${k}` : `--${k}=${v}`);
  }
  return args;
}

function direction(d: FioJsonDir): FioDirection {
  const p = d.clat_ns?.percentile ?? {};
  const p99 = p['99.000000'] ?? 0;
  return {
    ios: d.total_ios, bytes: d.io_bytes, iops: d.iops, bw: d.bw_bytes,
    latMeanUs: (d.lat_ns?.mean ?? d.clat_ns?.mean ?? 0) / 1000, latP99Us: p99 / 1000,
  };
}

/** Parses fio's JSON output (anything before the first '{', such as engine chatter, is ignored). */
export function parseFioJson(stdout: string, name: string): FioResult {
  const start = stdout.indexOf('{');
  if (start < 0) throw new Error(`fio ${name}: no JSON in output: ${stdout.slice(0, 500)}`);
  const j = JSON.parse(stdout.slice(start)) as FioJson;
  const job = j.jobs[0];
  if (!job) throw new Error(`fio ${name}: no job in output`);
  return {
    name, read: direction(job.read), write: direction(job.write), cpuPercent: job.usr_cpu + job.sys_cpu,
    runtimeMs: job.job_runtime ?? Math.max(job.read.runtime, job.write.runtime), error: job.error, raw: j,
  };
}

export function runFio(job: FioJob): Promise<FioResult> {
  const runtime = Number(job.options.runtime ?? 60);
  return new Promise((resolve, reject) => {
    const child = spawn('fio', fioArgs(job), { stdio: ['ignore', 'pipe', 'pipe'], env: job.env ?? process.env });
    let out = '';
    let err = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => { out += d; });
    child.stderr.setEncoding('utf8').on('data', (d: string) => { err += d; });
    const timer = setTimeout(() => child.kill('SIGKILL'), job.timeoutMs ?? (runtime + 60) * 1000);
    child.on('error', (e) => { clearTimeout(timer); reject(e); });
    child.on('close', (code) => {
      clearTimeout(timer);
      if (code !== 0) { reject(new Error(`fio ${job.name} exited ${code}: ${err.slice(-2000)}`)); return; }
      try { resolve(parseFioJson(out, job.name)); } catch (e) { reject(e); }
    });
  });
}

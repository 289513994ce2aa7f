/**
 * Runs fio against an NBD URI (ioengine=nbd) and returns IOPS and bandwidth from its JSON output.
 * Shared by the benchmark scripts; the workloads of DESIGN §8 are in `FIO_WORKLOADS`.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

const run = promisify(execFile);

export interface FioJob { name: string; rw: 'randwrite' | 'randread' | 'write' | 'read'; bs: string; iodepth: number }
export interface FioResult { job: string; iops: number; bytesPerSec: number; latMeanUs: number }

export const FIO_WORKLOADS: FioJob[] = [
  { name: '4k randwrite qd32', rw: 'randwrite', bs: '4k', iodepth: 32 },
  { name: '1M write qd8', rw: 'write', bs: '1M', iodepth: 8 },
];

interface FioJson { jobs: Array<{ write: FioSide; read: FioSide }> }
interface FioSide { iops: number; bw_bytes: number; lat_ns?: { mean: number } }

export async function fioNbd(uri: string, job: FioJob, opts: { runtimeSec?: number; size?: string } = {}): Promise<FioResult> {
  const args = [
    `--name=${job.name.replace(/\s+/g, '-')}`, '--ioengine=nbd', `--uri=${uri}`, `--rw=${job.rw}`, `--bs=${job.bs}`,
    `--iodepth=${job.iodepth}`, `--runtime=${opts.runtimeSec ?? 8}`, '--time_based', `--size=${opts.size ?? '1G'}`,
    '--output-format=json', '--randrepeat=0',
  ];
  const { stdout } = await run('fio', args, { maxBuffer: 16 << 20 });
  const j = JSON.parse(stdout.slice(stdout.indexOf('{'))) as FioJson;
  const side = job.rw.includes('write') ? j.jobs[0]!.write : j.jobs[0]!.read;
  return { job: job.name, iops: Math.round(side.iops), bytesPerSec: side.bw_bytes, latMeanUs: Math.round((side.lat_ns?.mean ?? 0) / 1000) };
}

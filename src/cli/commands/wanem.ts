import type { Command } from 'commander';
import { createInterface } from 'node:readline';
import { GeormError } from '../../util/errors.js';
import { parseSize } from '../../util/size.js';
import { startWanEmulator, type Direction, type Impairment } from '../../tools/wanem.js';

function hostPort(s: string, what: string): { address: string; port: number } {
  const m = /^(.*):(\d+)$/.exec(s);
  if (!m) throw new GeormError('GEORM_ERR_USAGE', `${what}: expected HOST:PORT, got '${s}'`, { exitCode: 1 });
  return { address: m[1]!.replace(/^\[|\]$/g, ''), port: Number(m[2]) };
}

function prob(v: string | undefined, what: string): number | undefined {
  if (v === undefined) return undefined;
  const p = v.endsWith('%') ? Number(v.slice(0, -1)) / 100 : Number(v);
  if (!(p >= 0 && p <= 1)) throw new GeormError('GEORM_ERR_USAGE', `${what}: expected a probability 0..1 or a percentage, got '${v}'`, { exitCode: 1 });
  return p;
}

function num(v: string | undefined, what: string): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!(n >= 0)) throw new GeormError('GEORM_ERR_USAGE', `${what}: expected a number ≥ 0, got '${v}'`, { exitCode: 1 });
  return n;
}

interface WanemOpts {
  aListen: string; aTarget: string; bListen: string; bTarget: string;
  delay?: string; jitter?: string; loss?: string; duplicate?: string; reorder?: string; rate?: string; queue?: string; seed?: string;
}

/** Impairment from options; the rate is in bytes per second (sizes like 10M accepted, i.e. 10 MiB/s). */
export function impairmentFrom(o: Omit<WanemOpts, 'aListen' | 'aTarget' | 'bListen' | 'bTarget'>): Impairment {
  const imp: Impairment = {};
  const set = <K extends keyof Impairment>(k: K, v: Impairment[K] | undefined) => { if (v !== undefined) imp[k] = v; };
  set('delayMs', num(o.delay, '--delay'));
  set('jitterMs', num(o.jitter, '--jitter'));
  set('loss', prob(o.loss, '--loss'));
  set('duplicate', prob(o.duplicate, '--duplicate'));
  set('reorder', prob(o.reorder, '--reorder'));
  if (o.rate !== undefined) set('rateBytesPerSec', parseSize(o.rate));
  if (o.queue !== undefined) set('queueBytes', parseSize(o.queue));
  return imp;
}

/** `georm wanem`: run the WAN emulator relay in the foreground, controlled by lines on stdin. */
export function register(program: Command): void {
  program.command('wanem')
    .description('userspace WAN emulator: a UDP relay adding delay, jitter, loss, duplication, reordering and a bandwidth cap')
    .requiredOption('--a-listen <host:port>', 'where side A sends (configure it as the peer address on A)')
    .requiredOption('--a-target <host:port>', "A's real address (packets from B are delivered there)")
    .requiredOption('--b-listen <host:port>', 'where side B sends')
    .requiredOption('--b-target <host:port>', "B's real address")
    .option('--delay <ms>', 'one-way delay per direction, ms')
    .option('--jitter <ms>', 'extra uniform delay 0..ms')
    .option('--loss <p>', 'loss probability (0.01 or 1%)')
    .option('--duplicate <p>', 'duplication probability')
    .option('--reorder <p>', 'probability a packet is held back and overtaken')
    .option('--rate <bytes/s>', 'bandwidth cap per direction (e.g. 1M = 1 MiB/s)')
    .option('--queue <bytes>', 'bottleneck queue size (default 4M)')
    .option('--seed <n>', 'random seed (repeatable runs)')
    .addHelpText('after', '\nCommands on stdin, one per line: cut [a2b|b2a], restore [a2b|b2a], set [a2b|b2a] key=value… (delay, jitter,\n' +
      'loss, duplicate, reorder, rate, queue), stats, quit. Stats are printed as JSON lines on stdout.')
    .action(async (o: WanemOpts) => {
      const imp = impairmentFrom(o);
      const em = await startWanEmulator({
        a: { listen: hostPort(o.aListen, '--a-listen'), target: hostPort(o.aTarget, '--a-target') },
        b: { listen: hostPort(o.bListen, '--b-listen'), target: hostPort(o.bTarget, '--b-target') },
        a2b: imp, b2a: imp, ...(o.seed ? { seed: Number(o.seed) } : {}),
      });
      process.stdout.write(JSON.stringify({ event: 'started', ports: em.ports(), impairment: imp }) + '\n');
      const done = new Promise<void>((resolve) => {
        const stop = () => resolve();
        process.once('SIGINT', stop);
        process.once('SIGTERM', stop);
        const rl = createInterface({ input: process.stdin });
        rl.on('close', stop);
        rl.on('line', (line) => {
          const [cmd, ...args] = line.trim().split(/\s+/);
          const dir = args[0] === 'a2b' || args[0] === 'b2a' ? (args.shift() as Direction) : undefined;
          try {
            if (cmd === 'cut') em.cut(dir);
            else if (cmd === 'restore') em.restore(dir);
            else if (cmd === 'set') {
              const kv = Object.fromEntries(args.map((a) => a.split('=') as [string, string]));
              em.set(impairmentFrom(kv), dir);
            } else if (cmd === 'stats') { /* printed below */ } else if (cmd === 'quit') { stop(); return; } else if (cmd) throw new Error(`unknown command '${cmd}'`);
            process.stdout.write(JSON.stringify({ event: cmd, dir: dir ?? 'both', stats: em.stats() }) + '\n');
          } catch (err) {
            process.stdout.write(JSON.stringify({ event: 'error', message: (err as Error).message }) + '\n');
          }
        });
      });
      await done;
      await em.close();
      process.stdin.destroy();
    });
}

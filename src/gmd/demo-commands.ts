/**
 * The demo's rehearsal commands: parsing one line (from stdin or `georm demo ctl`) and carrying it
 * out on a running demo. Each command answers with readable lines; a bad line gets an error that
 * says what is expected and changes nothing.
 */
import { GeormError } from '../util/errors.js';
import { parseSize } from '../util/size.js';
import { callControl } from './control.js';
import type { Impairment } from '../tools/wanem.js';
import type { DemoNetwork, DemoRehearsal, DemoSide } from './demo.js';
import type { GmdStatus } from './device/index.js';

export type DemoCommand =
  | { op: 'kill' | 'restart'; side: DemoSide }
  | { op: 'cut'; nets: DemoNetwork[] }
  | { op: 'restore' }
  | { op: 'wan'; impairment: Impairment }
  | { op: 'status' }
  | { op: 'help' };

export const DEMO_HELP = [
  'commands:',
  '  kill secondary|primary     SIGKILL that machine\'s GMD process (the demo keeps running)',
  '  restart secondary|primary  start it again; it rejoins and only the stale regions are resynchronised',
  '  cut geo1|geo2|all          cut a geographic network (both directions)',
  '  restore                    restore every network',
  '  wan delay=MS loss=P …      impair both networks (delay, jitter, loss, duplicate, reorder, rate)',
  '  status                     both machines, their state maps, resync and the networks',
  '  help                       this list',
];

function usage(message: string): GeormError {
  return new GeormError('DEMO_ERR_COMMAND', `${message} (type 'help' for the commands)`, { exitCode: 1 });
}

function side(word: string | undefined, cmd: string): DemoSide {
  if (word === 'primary' || word === 'secondary') return word;
  throw usage(`${cmd}: expected 'primary' or 'secondary', got '${word ?? ''}'`);
}

function probability(v: string, key: string): number {
  const p = v.endsWith('%') ? Number(v.slice(0, -1)) / 100 : Number(v);
  if (!(p >= 0 && p <= 1)) throw usage(`wan: ${key} must be a probability 0..1 or a percentage, got '${v}'`);
  return p;
}

function milliseconds(v: string, key: string): number {
  const n = Number(v.replace(/ms$/, ''));
  if (!(n >= 0 && n <= 60000)) throw usage(`wan: ${key} must be a number of ms (0..60000), got '${v}'`);
  return n;
}

/** `wan` arguments: key=value pairs; an empty list is an error (nothing to change). */
function impairment(args: string[]): Impairment {
  if (!args.length) throw usage('wan: expected key=value pairs, e.g. wan delay=30 loss=1%');
  const imp: Impairment = {};
  for (const a of args) {
    const m = /^([a-z]+)=(\S+)$/.exec(a);
    if (!m) throw usage(`wan: expected key=value, got '${a}'`);
    const [, key, v] = m as unknown as [string, string, string];
    switch (key) {
      case 'delay': imp.delayMs = milliseconds(v, key); break;
      case 'jitter': imp.jitterMs = milliseconds(v, key); break;
      case 'loss': imp.loss = probability(v, key); break;
      case 'duplicate': imp.duplicate = probability(v, key); break;
      case 'reorder': imp.reorder = probability(v, key); break;
      case 'rate':
        try { imp.rateBytesPerSec = parseSize(v); } catch { throw usage(`wan: rate must be bytes per second (e.g. 1M), got '${v}'`); }
        break;
      default: throw usage(`wan: unknown setting '${key}' (delay, jitter, loss, duplicate, reorder, rate)`);
    }
  }
  return imp;
}

/** One command line; throws DEMO_ERR_COMMAND on anything else. Blank lines are `null`. */
export function parseDemoCommand(line: string): DemoCommand | null {
  const [cmd, ...args] = line.trim().split(/\s+/).filter(Boolean);
  if (!cmd) return null;
  const none = () => { if (args.length) throw usage(`${cmd}: takes no arguments`); };
  switch (cmd) {
    case 'kill':
    case 'restart': {
      const s = side(args[0], cmd);
      if (args.length > 1) throw usage(`${cmd}: one argument expected`);
      return { op: cmd, side: s };
    }
    case 'cut': {
      const w = args[0];
      if (args.length !== 1 || (w !== 'geo1' && w !== 'geo2' && w !== 'all')) throw usage(`cut: expected geo1, geo2 or all, got '${args.join(' ')}'`);
      return { op: 'cut', nets: w === 'all' ? ['geo1', 'geo2'] : [w] };
    }
    case 'restore': none(); return { op: 'restore' };
    case 'wan': return { op: 'wan', impairment: impairment(args) };
    case 'status': none(); return { op: 'status' };
    case 'help': case '?': none(); return { op: 'help' };
    default: throw usage(`unknown command '${cmd}'`);
  }
}

function describeImpairment(imp: Impairment): string {
  const parts: string[] = [];
  if (imp.delayMs) parts.push(`delay ${imp.delayMs} ms`);
  if (imp.jitterMs) parts.push(`jitter ${imp.jitterMs} ms`);
  if (imp.loss) parts.push(`loss ${+(imp.loss * 100).toFixed(3)}%`);
  if (imp.duplicate) parts.push(`duplicate ${+(imp.duplicate * 100).toFixed(3)}%`);
  if (imp.reorder) parts.push(`reorder ${+(imp.reorder * 100).toFixed(3)}%`);
  if (imp.rateBytesPerSec) parts.push(`rate ${imp.rateBytesPerSec} B/s`);
  return parts.length ? parts.join(', ') : 'no impairment';
}

/** One line per machine from its status, or why there is none. */
export async function sideStatusLine(r: DemoRehearsal, s: DemoSide): Promise<string> {
  const { machine, pid, socket } = r.side(s);
  if (pid === null) return `${machine} (${s}): not running`;
  try {
    const st = await callControl(socket, 'status', {}, 3000) as GmdStatus;
    const peers = st.peers.map((p) => `peer ${p.machine} ${p.active ? 'up, mirrored' : 'down'}`).join(', ');
    const map = st.map ? `map ${st.map.stale} stale, ${st.map.inconsistent} in flight of ${st.map.regions} regions` : 'no map';
    const rs = st.resync && !st.resync.complete ? `, resync ${st.resync.percent.toFixed(0)}% (${st.resync.doneBytes}/${st.resync.totalBytes} bytes)` : '';
    return `${machine} (${s}, pid ${pid}): ${st.state}, ${peers || 'no peer'}, ${map}${rs}`;
  } catch (e) {
    return `${machine} (${s}, pid ${pid}): not answering (${(e as Error).message})`;
  }
}

/** Carries out one command; resolves with the lines to show, rejects with a clear error. */
export async function runDemoCommand(r: DemoRehearsal, c: DemoCommand): Promise<string[]> {
  switch (c.op) {
    case 'kill': return [await r.killSide(c.side)];
    case 'restart': return r.restartSide(c.side);
    case 'cut': r.cut(c.nets); return [`${c.nets.join(' and ')} cut (both directions)`];
    case 'restore': {
      r.restore();
      const lines = ['networks restored'];
      // A cut longer than the Promote Failure Timeout made each side give the other down: they
      // stay apart (stale marking) until the secondary rejoins, as in the seed.
      const { pid, socket } = r.side('primary');
      const st = pid === null ? null : await callControl(socket, 'status', {}, 3000).catch(() => null) as GmdStatus | null;
      if (st && st.state === 'AVAILABLE' && !st.peers.some((p) => p.active)) {
        lines.push("the primary is not mirroring: after a partition the secondary must rejoin ('restart secondary')");
      }
      return lines;
    }
    case 'wan': r.wan(c.impairment); return [`wan: ${describeImpairment(c.impairment)} on geo1 and geo2`];
    case 'help': return DEMO_HELP;
    case 'status': {
      const lines = [await sideStatusLine(r, 'primary'), await sideStatusLine(r, 'secondary')];
      for (const n of r.networks()) lines.push(`${n.name}: ${n.cut ? 'cut' : 'up'}, ${describeImpairment(n.impairment)}`);
      return lines;
    }
  }
}

/** Parses and runs one line; errors become a single `error: …` line (a bad line never stops the demo). */
export async function demoCommandLine(r: DemoRehearsal, line: string): Promise<string[]> {
  try {
    const c = parseDemoCommand(line);
    return c ? await runDemoCommand(r, c) : [];
  } catch (e) {
    return [`error: ${(e as Error).message}`];
  }
}

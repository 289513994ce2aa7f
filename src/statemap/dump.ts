/**
 * The machine-readable mapfile (`gmd_show_state -D -M FILE`, `georm show-state --dump`): identity,
 * generation and the non-clean cells as runs, plus a SHA-256 of all cells so a damaged or edited
 * dump is refused when loaded back. Text form (one item per line, `#` comments ignored):
 *
 *   georm-statemap-dump 1
 *   gmd data10gmd
 *   minor 10
 *   device_size 10737418240
 *   region_size 32768
 *   regions 327680
 *   generation 0x1f2e3d4c5b6a7988
 *   machine alpha                 (optional)
 *   run 100 4 0xf                 (first region, count, value; clean runs are omitted)
 *   sha256 <64 hex digits>
 *   end
 *
 * The JSON form carries the same fields (`runs: [[first, count, value], …]`).
 */
import { createHash } from 'node:crypto';
import {
  CELL_CLEAN, CELL_INFLIGHT_MAX, CELL_STALE, MAX_REGIONS, StateMapError, packCells, regionCountFor, validateIdentity,
  type StateMapIdentity,
} from './format.js';

export interface DumpSource {
  identity: StateMapIdentity;
  generation: bigint;
  /** A StateMap (method) or a StateMapSnapshot (array). */
  cells: Uint8Array | (() => Uint8Array);
}

export interface ParsedDump {
  identity: StateMapIdentity;
  generation: bigint;
  machine?: string;
  cells: Uint8Array;
}

export const DUMP_MAGIC = 'georm-statemap-dump';
export const DUMP_VERSION = 1;

type Run = [first: number, count: number, value: number];

function cellsOf(src: DumpSource): Uint8Array {
  return typeof src.cells === 'function' ? src.cells() : src.cells;
}

function runsOf(cells: Uint8Array): Run[] {
  const runs: Run[] = [];
  for (let r = 0; r < cells.length;) {
    const v = cells[r]!;
    let e = r + 1;
    while (e < cells.length && cells[e] === v) e++;
    if (v !== CELL_CLEAN) runs.push([r, e - r, v]);
    r = e;
  }
  return runs;
}

function cellDigest(cells: Uint8Array): string {
  return createHash('sha256').update(packCells(cells)).digest('hex');
}

const hex = (v: number) => `0x${v.toString(16)}`;

export function dumpStateMap(map: DumpSource, format: 'text' | 'json', opts: { machine?: string } = {}): string {
  const cells = cellsOf(map);
  const id = map.identity;
  const runs = runsOf(cells);
  const sha256 = cellDigest(cells);
  const generation = `0x${map.generation.toString(16).padStart(16, '0')}`;
  if (format === 'json') {
    return `${JSON.stringify({
      format: DUMP_MAGIC, version: DUMP_VERSION, gmd: id.gmdName, minor: id.minor, deviceSize: id.deviceSize,
      regionSize: id.regionSize, regions: cells.length, generation, ...(opts.machine ? { machine: opts.machine } : {}), runs, sha256,
    })}\n`;
  }
  const lines = [
    `${DUMP_MAGIC} ${DUMP_VERSION}`,
    `gmd ${id.gmdName}`,
    `minor ${id.minor}`,
    `device_size ${id.deviceSize}`,
    `region_size ${id.regionSize}`,
    `regions ${cells.length}`,
    `generation ${generation}`,
  ];
  if (opts.machine) lines.push(`machine ${opts.machine}`);
  for (const [first, count, v] of runs) lines.push(`run ${first} ${count} ${hex(v)}`);
  lines.push(`sha256 ${sha256}`, 'end', '');
  return lines.join('\n');
}

/** Parses a dump (text or JSON); refuses anything malformed with STATEMAP_ERR_CORRUPT naming the line. */
export function parseDump(text: string, source = 'dump'): ParsedDump {
  const trimmed = text.trimStart();
  const raw = trimmed.startsWith('{') ? fromJson(trimmed, source) : fromText(text, source);
  return build(raw, source);
}

interface RawDump {
  gmd?: unknown; minor?: unknown; deviceSize?: unknown; regionSize?: unknown; regions?: unknown; generation?: unknown;
  machine?: unknown; runs: Array<{ run: unknown; where: string }>; sha256?: unknown;
}

function corrupt(source: string, where: string, msg: string): StateMapError {
  return new StateMapError('STATEMAP_ERR_CORRUPT', `${source}${where}: ${msg}; refusing to load it`);
}

function fromJson(text: string, source: string): RawDump {
  let o: unknown;
  try {
    o = JSON.parse(text);
  } catch (e) {
    throw corrupt(source, '', `not valid JSON (${(e as Error).message})`);
  }
  if (typeof o !== 'object' || o === null || Array.isArray(o)) throw corrupt(source, '', 'not a JSON object');
  const j = o as Record<string, unknown>;
  if (j.format !== DUMP_MAGIC) throw corrupt(source, '', `not a georm state map dump (format ${JSON.stringify(j.format)})`);
  if (j.version !== DUMP_VERSION) throw corrupt(source, '', `unsupported dump version ${JSON.stringify(j.version)}`);
  if (!Array.isArray(j.runs)) throw corrupt(source, '', '"runs" must be an array');
  return {
    gmd: j.gmd, minor: j.minor, deviceSize: j.deviceSize, regionSize: j.regionSize, regions: j.regions,
    generation: j.generation, machine: j.machine, sha256: j.sha256,
    runs: (j.runs as unknown[]).map((run, i) => ({ run, where: ` runs[${i}]` })),
  };
}

function fromText(text: string, source: string): RawDump {
  const out: RawDump = { runs: [] };
  const lines = text.split('\n');
  let sawMagic = false;
  let sawEnd = false;
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.replace(/#.*$/, '').trim();
    if (line === '') continue;
    const where = `:${i + 1}`;
    if (sawEnd) throw corrupt(source, where, 'text after "end"');
    const [key, ...rest] = line.split(/\s+/);
    if (!sawMagic) {
      if (key !== DUMP_MAGIC) throw corrupt(source, where, `not a georm state map dump (expected "${DUMP_MAGIC} ${DUMP_VERSION}")`);
      if (rest.length !== 1 || rest[0] !== String(DUMP_VERSION)) throw corrupt(source, where, `unsupported dump version "${rest.join(' ')}"`);
      sawMagic = true;
      continue;
    }
    const one = (): string => {
      if (rest.length !== 1) throw corrupt(source, where, `"${key}" takes exactly one value`);
      return rest[0]!;
    };
    const num = (): number => {
      const v = one();
      if (!/^\d{1,16}$/.test(v)) throw corrupt(source, where, `"${key}" must be a whole number, not "${v}"`);
      return Number(v);
    };
    const seen = (k: keyof RawDump) => {
      if (out[k] !== undefined) throw corrupt(source, where, `"${key}" given twice`);
    };
    switch (key) {
      case 'gmd': seen('gmd'); out.gmd = one(); break;
      case 'minor': seen('minor'); out.minor = num(); break;
      case 'device_size': seen('deviceSize'); out.deviceSize = num(); break;
      case 'region_size': seen('regionSize'); out.regionSize = num(); break;
      case 'regions': seen('regions'); out.regions = num(); break;
      case 'generation': seen('generation'); out.generation = one(); break;
      case 'machine': seen('machine'); out.machine = one(); break;
      case 'sha256': seen('sha256'); out.sha256 = one(); break;
      case 'run': {
        if (rest.length !== 3 || !/^\d{1,16}$/.test(rest[0]!) || !/^\d{1,16}$/.test(rest[1]!) || !/^0x[0-9a-f]$/i.test(rest[2]!)) {
          throw corrupt(source, where, 'a run is "run FIRST COUNT 0xV"');
        }
        out.runs.push({ run: [Number(rest[0]), Number(rest[1]), Number.parseInt(rest[2]!, 16)], where });
        break;
      }
      case 'end': if (rest.length) throw corrupt(source, where, '"end" takes no value'); sawEnd = true; break;
      default: throw corrupt(source, where, `unknown item "${key}"`);
    }
  }
  if (!sawMagic) throw corrupt(source, '', 'empty dump');
  if (!sawEnd) throw corrupt(source, '', 'truncated (no "end" line)');
  return out;
}

function build(raw: RawDump, source: string): ParsedDump {
  const need = (v: unknown, name: string, check: (x: unknown) => boolean) => {
    if (v === undefined) throw corrupt(source, '', `missing "${name}"`);
    if (!check(v)) throw corrupt(source, '', `bad "${name}" ${JSON.stringify(v)}`);
  };
  const isNat = (x: unknown) => typeof x === 'number' && Number.isSafeInteger(x) && x >= 0;
  need(raw.gmd, 'gmd', (x) => typeof x === 'string');
  need(raw.minor, 'minor', isNat);
  need(raw.deviceSize, 'device_size', isNat);
  need(raw.regionSize, 'region_size', isNat);
  need(raw.regions, 'regions', isNat);
  need(raw.generation, 'generation', (x) => typeof x === 'string' && /^0x[0-9a-f]{1,16}$/i.test(x));
  need(raw.sha256, 'sha256', (x) => typeof x === 'string' && /^[0-9a-f]{64}$/.test(x));
  if (raw.machine !== undefined && typeof raw.machine !== 'string') throw corrupt(source, '', 'bad "machine"');
  const identity: StateMapIdentity = {
    gmdName: raw.gmd as string, minor: raw.minor as number, deviceSize: raw.deviceSize as number, regionSize: raw.regionSize as number,
  };
  try {
    validateIdentity(identity);
  } catch (e) {
    throw corrupt(source, '', (e as Error).message);
  }
  const regions = raw.regions as number;
  if (regions !== regionCountFor(identity.deviceSize, identity.regionSize) || regions > MAX_REGIONS) {
    throw corrupt(source, '', `"regions" ${regions} does not match device size ${identity.deviceSize} and region size ${identity.regionSize}`);
  }
  const cells = new Uint8Array(regions);
  let prevEnd = 0;
  for (const { run, where } of raw.runs) {
    if (!Array.isArray(run) || run.length !== 3 || !run.every(isNat)) throw corrupt(source, where, 'a run is [first, count, value]');
    const [first, count, v] = run as Run;
    if (count === 0 || first < prevEnd || first + count > regions) throw corrupt(source, where, `run ${first}+${count} overlaps, is empty or lies outside 0..${regions - 1}`);
    if (v === CELL_CLEAN || (v > CELL_INFLIGHT_MAX && v !== CELL_STALE)) throw corrupt(source, where, `run value ${hex(v)} is not a non-clean cell value`);
    cells.fill(v, first, first + count);
    prevEnd = first + count;
  }
  if (cellDigest(cells) !== raw.sha256) throw corrupt(source, '', 'sha256 of the cells does not match (damaged or edited dump)');
  const out: ParsedDump = { identity, generation: BigInt(raw.generation as string), cells };
  if (raw.machine !== undefined) out.machine = raw.machine as string;
  return out;
}

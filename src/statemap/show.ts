/**
 * The seed's `gmd_show_state` display: one line per cell (or per group of cells) with its value,
 * lines equal to the one above collapsed into a single `*` (as od(1) does), and the number of cells
 * on the last line. Several maps side by side (one value column each) for the unify preview.
 *
 *   Point of View: Node alpha
 *   -----
 *   Point of View GMD List:
 *   ------
 *   Name: alpha20gmd
 *   Status: STOPPED
 *   State Map:
 *   Cell      Value
 *   --------  -----
 *   0         0xf
 *   *
 *   1048576
 */
import { CELL_CLEAN, CELL_STALE } from './format.js';

export interface ShowStateOptions {
  /** "Point of View" machine. */
  machine?: string;
  gmdName?: string;
  /** DEFINED | STOPPED | AVAILABLE (or anything the caller knows). */
  status?: string;
  /** Column titles when several maps are shown (default "Value", or the index). */
  columns?: string[];
  /** Cells per line (default 1, as the seed). */
  cellsPerLine?: number;
}

const hex = (v: number) => `0x${v.toString(16)}`;

export function formatShowState(cells: Uint8Array | readonly Uint8Array[], opts: ShowStateOptions = {}): string {
  const maps: readonly Uint8Array[] = cells instanceof Uint8Array ? [cells] : cells;
  const n = maps.length ? maps[0]!.length : 0;
  for (const m of maps) if (m.length !== n) throw new RangeError('formatShowState: maps of different sizes');
  const per = Math.max(1, Math.floor(opts.cellsPerLine ?? 1));
  const out: string[] = [];
  if (opts.machine !== undefined) out.push(`Point of View: Node ${opts.machine}`, '-----', 'Point of View GMD List:', '------');
  if (opts.gmdName !== undefined) out.push(`Name: ${opts.gmdName}`);
  if (opts.status !== undefined) out.push(`Status: ${opts.status}`);
  out.push('State Map:');
  const titles = opts.columns ?? (maps.length === 1 ? ['Value'] : maps.map((_, i) => `Value${i}`));
  const cellW = Math.max(8, String(n).length + 2);
  const colW = Math.max(4 * per + 1, ...titles.map((s) => s.length + 2));
  out.push('Cell'.padEnd(cellW) + titles.map((s) => s.padEnd(colW)).join('').trimEnd());
  out.push('-'.repeat(cellW - 2).padEnd(cellW) + titles.map((s) => '-'.repeat(Math.max(5, s.length)).padEnd(colW)).join('').trimEnd());

  const sameAsPrev = (start: number): boolean => {
    if (start + per > n) return false; // a short last line is never "the same"
    for (const m of maps) for (let k = 0; k < per; k++) if (m[start + k] !== m[start - per + k]) return false;
    return true;
  };
  let starred = false;
  for (let start = 0; start < n;) {
    if (start > 0 && sameAsPrev(start)) {
      if (!starred) { out.push('*'); starred = true; }
      // Skip the rest of a long run quickly: whole-line comparisons are what decides.
      start += per;
      continue;
    }
    starred = false;
    const end = Math.min(n, start + per);
    let line = String(start).padEnd(cellW);
    for (const m of maps) {
      const vals: string[] = [];
      for (let r = start; r < end; r++) vals.push(hex(m[r]!));
      line += vals.join(' ').padEnd(colW);
    }
    out.push(line.trimEnd());
    start = end;
  }
  out.push(String(n));
  return `${out.join('\n')}\n`;
}

export function isMapClean(cells: Uint8Array): boolean {
  for (let r = 0; r < cells.length; r++) if (cells[r] !== CELL_CLEAN) return false;
  return true;
}

/** The seed's exit code of gmd_show_state: 2 when any of the shown maps is dirty, else 0. */
export function showStateExitCode(...maps: Uint8Array[]): 0 | 2 {
  return maps.some((m) => !isMapClean(m)) ? 2 : 0;
}

export type Divergence = 'clean' | 'local-dirty' | 'remote-dirty' | 'diverged';

/**
 * Which way data must flow (DESIGN §4.3) or that it cannot (both dirty = divergence, §4.7: start
 * refused, unify first).
 */
export function divergence(local: Uint8Array, remote: Uint8Array): Divergence {
  const l = !isMapClean(local);
  const r = !isMapClean(remote);
  return l && r ? 'diverged' : l ? 'local-dirty' : r ? 'remote-dirty' : 'clean';
}

/** What `unify --master` will leave in the master's map: every region non-clean on either side, stale. */
export function unifyPreview(master: Uint8Array, other: Uint8Array): Uint8Array {
  if (master.length !== other.length) throw new RangeError('unifyPreview: maps of different sizes');
  const out = new Uint8Array(master.length);
  for (let r = 0; r < out.length; r++) out[r] = master[r] !== CELL_CLEAN || other[r] !== CELL_CLEAN ? CELL_STALE : CELL_CLEAN;
  return out;
}

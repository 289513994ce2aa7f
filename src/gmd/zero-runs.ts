/**
 * How a resync chunk that reads as zeros is stored on the side it comes from: as holes or as
 * allocated blocks. Resync sends such a chunk as a zero rather than as data; without this, every
 * such zero allowed holes, so ranges the application had allocated (WRITE_ZEROES with NO_HOLE,
 * zeros written as data) became holes on the other side: the same bytes, but a thick-provisioned
 * copy could later run out of space where the source cannot.
 */
import type { Backend } from '../../nbd/backend.js';
import { STATE_HOLE } from '../../nbd/protocol/constants.js';
import { GeormError } from '../util/errors.js';

/** A piece of a zero range: a hole on the source (zero it with holes allowed) or allocated (NO_HOLE). */
export interface ZeroRun { offset: number; length: number; hole: boolean }

/**
 * More pieces than this and the whole range is zeroed allocated instead: each piece costs the push
 * direction one message, and a finely fragmented range is better kept allocated whole (the copy
 * then uses at least the source's space, never less) than sent as dozens of 16-byte messages.
 */
export const MAX_RUNS = 16;

/**
 * The hole and allocated runs of [offset, offset+length) on `source` (one blockStatus call), or
 * null when the backend cannot tell holes from data.
 *
 * Call it after reading the range. FileBackend answers with SEEK_DATA/SEEK_HOLE; on ext4 and XFS
 * an unwritten extent (fallocate, FALLOC_FL_ZERO_RANGE, so also a WRITE_ZEROES with NO_HOLE) counts
 * as data only where its pages are in the page cache, which the read has just put there. Should
 * memory pressure evict them in between, that range counts as a hole and travels as resync always
 * sent it (same bytes, allocation lost). A real hole is a hole whether cached or not.
 */
export async function sourceRuns(source: Backend, offset: number, length: number): Promise<ZeroRun[] | null> {
  if (!source.blockStatus || !source.flags().canExtents) return null;
  const extents = await source.blockStatus(offset, length);
  const end = offset + length;
  const runs: ZeroRun[] = [];
  let at = offset;
  for (const e of extents) {
    if (at >= end) break;
    const n = Math.min(e.length, end - at);
    add(runs, at, n, (e.flags & STATE_HOLE) !== 0);
    at += n;
  }
  // A backend may describe only the start of the range (FileBackend stops after 1024 extents): the
  // rest counts as allocated, the choice that never loses an allocation.
  if (at < end) add(runs, at, end - at, false);
  return runs.length > MAX_RUNS ? [{ offset, length, hole: false }] : runs;
}

function add(runs: ZeroRun[], offset: number, length: number, hole: boolean): void {
  if (length <= 0) return;
  const last = runs[runs.length - 1];
  if (last && last.hole === hole) last.length += length;
  else runs.push({ offset, length, hole });
}

/**
 * When the source cannot tell (a backend without extents, no native addon, a peer too old to
 * answer), the zero allows holes, as resync always did: such a backend reports everything as
 * data, and taking that literally would write every trimmed or never-written range out in full on
 * the copy, thickening a thin volume on each resync for ranges the source most likely has sparse.
 */
export function holesAllowed(offset: number, length: number): ZeroRun[] {
  return [{ offset, length, hole: true }];
}

/**
 * Checks runs received from the peer (DESIGN §4 rule 9): contiguous, covering exactly
 * [offset, offset+length), at most MAX_RUNS. null stays null (the peer cannot tell).
 */
export function checkRuns(v: unknown, offset: number, length: number): ZeroRun[] | null {
  if (v === null) return null;
  const bad = () => new GeormError('GMD_ERR_BAD_MESSAGE', 'malformed zero-runs reply');
  if (!Array.isArray(v) || v.length === 0 || v.length > MAX_RUNS) throw bad();
  let at = offset;
  const out: ZeroRun[] = [];
  for (const r of v as unknown[]) {
    const o = r as Partial<ZeroRun> | null;
    if (!o || o.offset !== at || !Number.isSafeInteger(o.length) || o.length! <= 0 || typeof o.hole !== 'boolean') throw bad();
    out.push({ offset: at, length: o.length!, hole: o.hole });
    at += o.length!;
  }
  if (at !== offset + length) throw bad();
  return out;
}

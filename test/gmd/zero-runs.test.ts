/**
 * The layout resync gives a chunk that reads as zeros (src/gmd/zero-runs.ts): runs from a backend's
 * extents, the "cannot tell" cases, and the checks on runs a peer sends (DESIGN §4 rule 9).
 */
import t from 'tap';
import type { Backend, BackendFlags, Extent } from '../../nbd/backend.js';
import { MAX_RUNS, checkRuns, holesAllowed, sourceRuns } from '../../src/gmd/zero-runs.js';

const K = 1024;
const HOLE = 3; // STATE_HOLE | STATE_ZERO

/** Just enough of a Backend for sourceRuns: flags and blockStatus. */
function fake(extents: Extent[] | null, canExtents = true): Backend {
  const flags = { canExtents } as BackendFlags;
  const b = { flags: () => flags } as Partial<Backend>;
  if (extents) b.blockStatus = async () => extents;
  return b as Backend;
}

t.test('runs follow the extents, adjacent ones of a kind merged, clipped to the range', async (t) => {
  const b = fake([{ length: 8 * K, flags: HOLE }, { length: 8 * K, flags: HOLE }, { length: 16 * K, flags: 0 }, { length: 64 * K, flags: HOLE }]);
  t.same(await sourceRuns(b, 4096, 64 * K), [
    { offset: 4096, length: 16 * K, hole: true },
    { offset: 4096 + 16 * K, length: 16 * K, hole: false },
    { offset: 4096 + 32 * K, length: 32 * K, hole: true },
  ]);
});

t.test('a range the extents do not reach counts as allocated; too many runs make it allocated whole', async (t) => {
  t.same(await sourceRuns(fake([{ length: 4 * K, flags: HOLE }]), 0, 16 * K),
    [{ offset: 0, length: 4 * K, hole: true }, { offset: 4 * K, length: 12 * K, hole: false }]);
  const fragmented = Array.from({ length: MAX_RUNS + 1 }, (_, i) => ({ length: K, flags: i % 2 ? 0 : HOLE }));
  t.same(await sourceRuns(fake(fragmented), 0, (MAX_RUNS + 1) * K), [{ offset: 0, length: (MAX_RUNS + 1) * K, hole: false }]);
});

t.test('a backend that cannot tell gives null, and the caller allows holes', async (t) => {
  t.equal(await sourceRuns(fake(null), 0, 4096), null, 'no blockStatus');
  t.equal(await sourceRuns(fake([{ length: 4096, flags: 0 }], false), 0, 4096), null, 'canExtents false (everything reads as data)');
  t.same(holesAllowed(10, 20), [{ offset: 10, length: 20, hole: true }]);
});

t.test('runs from a peer are checked before use', async (t) => {
  const good = [{ offset: 100, length: 50, hole: false }, { offset: 150, length: 50, hole: true }];
  t.same(checkRuns(good, 100, 100), good);
  t.equal(checkRuns(null, 100, 100), null, 'null: the peer cannot tell');
  const bad: unknown[] = [
    undefined, 'x', [], { offset: 100, length: 100, hole: true },
    [{ offset: 100, length: 50, hole: true }],                                              // short of the end
    [{ offset: 100, length: 50, hole: true }, { offset: 160, length: 40, hole: true }],    // a gap
    [{ offset: 100, length: 150, hole: true }],                                             // past the end
    [{ offset: 100, length: 0, hole: true }, { offset: 100, length: 100, hole: true }],    // empty run
    [{ offset: 100, length: 100.5, hole: true }],
    [{ offset: 100, length: 100, hole: 1 }],
    Array.from({ length: MAX_RUNS + 1 }, (_, i) => ({ offset: 100 + i, length: 1, hole: true })),
  ];
  for (const v of bad) t.throws(() => checkRuns(v, 100, v === bad[bad.length - 1] ? MAX_RUNS + 1 : 100), { code: 'GMD_ERR_BAD_MESSAGE' }, JSON.stringify(v));
});

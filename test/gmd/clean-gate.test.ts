import t from 'tap';
import { CleanGate } from '../../src/gmd/clean-gate.js';

/**
 * The gate's bookkeeping with flushes that the test completes by hand: which writes a flush covers
 * when flushes overlap, when the peer is lost mid-flush, and when a flush fails. (The real disk and
 * network are exercised by test/gmd/durability.test.ts and test/vm/.)
 */
function harness() {
  const ended: string[] = [];
  const flushes: Array<{ resolve: (ok: boolean) => void; reject: (e: Error) => void }> = [];
  const errors: unknown[] = [];
  const gate = new CleanGate({
    endWrite: (first, last, outcome) => ended.push(`${first}-${last}:${outcome}`),
    flushBoth: () => new Promise<boolean>((resolve, reject) => flushes.push({ resolve, reject })),
    onError: (e) => errors.push(e),
  }, 3_600_000, 4);
  return { gate, ended, flushes, errors };
}
const tick = () => new Promise((r) => setImmediate(r));

t.test('a flush covers exactly the regions whose last write completed before it started', async (t) => {
  const { gate, ended, flushes } = harness();
  gate.done(1, 1); gate.done(2, 3);
  t.equal(gate.waiting, 3, 'regions 1, 2, 3 held');
  const f = gate.flushNow();
  gate.done(4, 4);                                   // after the flush began: not covered by it
  gate.done(3, 3);                                   // region 3 written again: its held reference must wait too
  t.same(ended, ['3-3:both'], 'the second write to a held region ends its own reference at once');
  t.equal(flushes.length, 1);
  t.equal(gate.flushNow(), f, 'a second caller shares the running flush');
  flushes[0]!.resolve(true);
  await f;
  t.same(ended.slice(1), ['1-1:both', '2-2:both']);
  t.equal(gate.waiting, 2, 'regions 3 and 4 still wait');
  const m = gate.mark();
  gate.done(5, 5);
  gate.covered(m);                                   // an application flush issued before write 5
  t.same(ended.slice(3).sort(), ['3-3:both', '4-4:both']);
  t.equal(gate.waiting, 1);
});

t.test('peer lost: waiting regions turn stale at once; a flush begun before proves nothing afterwards', async (t) => {
  const { gate, ended, flushes } = harness();
  gate.done(1, 1); gate.done(2, 2);
  const f = gate.flushNow();
  const m = gate.mark();
  gate.peerLost();
  t.same(ended, ['1-1:local-only', '2-2:local-only']);
  gate.done(7, 7);                                   // a write to the next peer
  flushes[0]!.resolve(true);                         // the old flush completes late
  await f;
  gate.covered(m);                                   // and so does an old application flush
  t.equal(ended.length, 2, 'neither cleans the new peer\'s write');
  t.equal(gate.waiting, 1);
});

t.test('a flush the peer cannot confirm makes its regions stale; a local failure keeps them waiting', async (t) => {
  const { gate, ended, flushes, errors } = harness();
  gate.done(1, 1);
  const f = gate.flushNow();
  flushes[0]!.resolve(false);
  await f;
  t.same(ended, ['1-1:local-only']);
  gate.done(2, 2);
  const g = gate.flushNow();
  flushes[1]!.reject(new Error('EIO'));
  await g;
  t.equal(errors.length, 1);
  t.equal(gate.waiting, 1, 'still in flight (marked on disk), tried again later');
  t.equal(ended.length, 1);
});

t.test('maxRegions triggers a flush without waiting for the interval; drain releases everything', async (t) => {
  const { gate, ended, flushes } = harness();
  for (let i = 0; i < 4; i++) gate.done(i, i);
  t.equal(flushes.length, 1, 'the fourth held region started a flush');
  flushes[0]!.resolve(true);
  await tick();
  t.equal(ended.length, 4);
  gate.done(9, 9);
  const d = gate.drain();
  await tick();
  flushes[1]!.resolve(true);
  await d;
  t.same(ended.slice(4), ['9-9:both']);
  t.equal(gate.waiting, 0);
  gate.done(10, 10);
  const e = gate.drain();
  await tick();
  flushes[2]!.reject(new Error('EIO'));
  await e;
  t.same(ended.slice(5), ['10-10:local-only'], 'a stop whose flush fails leaves the region stale, never clean');
});

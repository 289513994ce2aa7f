/**
 * RangeLock edges that the main range-lock test leaves open, each found by a mutant that survived it
 * (docs/safety.md, "Mutation testing"): release frees exactly the range released, more holders than
 * the first array holds stay held, ranges that only touch do not conflict (with a holder or with a
 * waiter), and a request that overlaps only an earlier *waiter* queues behind it (FIFO among
 * overlapping writes is what keeps async write order on the secondary).
 */
import t from 'tap';
import { RangeLock } from '../../src/gmd/rangelock.js';

t.test('release frees exactly the released range, not another holder', async (t) => {
  const l = new RangeLock();
  const got: string[] = [];
  l.acquire(0, 10, () => got.push('a'));
  l.acquire(20, 30, () => got.push('b'));
  l.acquire(0, 5, () => got.push('c'));     // waits for a
  l.release(20, 30);
  t.same(got, ['a', 'b'], 'releasing b does not free a');
  l.acquire(25, 26, () => got.push('d'));
  t.same(got, ['a', 'b', 'd'], 'b\'s range is free again');
  l.release(0, 10);
  t.same(got, ['a', 'b', 'd', 'c'], 'c granted once a is released');
});

t.test('100 holders at once: every one stays held', async (t) => {
  const l = new RangeLock();
  for (let i = 0; i < 100; i++) l.acquire(i * 10, i * 10 + 10, () => {});
  t.equal(l.held, 100);
  const late: number[] = [];
  for (let i = 0; i < 100; i++) l.acquire(i * 10 + 5, i * 10 + 6, () => late.push(i));
  t.same(late, [], 'a request inside any of the 100 ranges waits');
  l.release(990, 1000);
  t.same(late, [99], 'the last holder released: only its waiter goes');
});

t.test('ranges that only touch do not conflict, with a holder or with a waiter', async (t) => {
  const l = new RangeLock();
  const got: string[] = [];
  l.acquire(10, 20, () => got.push('a'));
  l.acquire(0, 10, () => got.push('b'));      // ends where a starts
  l.acquire(15, 50, () => got.push('w'));     // waits for a
  l.acquire(50, 60, () => got.push('c'));     // starts where the waiter w ends
  t.same(got, ['a', 'b', 'c']);
});

t.test('a request overlapping only an earlier waiter queues behind it', async (t) => {
  const l = new RangeLock();
  const got: string[] = [];
  l.acquire(0, 100, () => got.push('a'));
  l.acquire(50, 150, () => got.push('w'));    // waits for a
  l.acquire(120, 130, () => got.push('x'));   // free of a, but overlaps w: must not overtake it
  t.same(got, ['a'], 'x waits behind w');
  l.release(0, 100);
  t.same(got, ['a', 'w'], 'w first');
  l.release(50, 150);
  t.same(got, ['a', 'w', 'x'], 'then x');
});

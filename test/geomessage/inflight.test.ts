import t from 'tap';
import { InflightQueue } from '../../src/geomessage/inflight.js';

/** Everything the queue holds, walked as the transport walks it. */
function walk(q: InflightQueue<number>): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (let n = q.low; n < q.high; n++) { const v = q.get(n); if (v !== undefined) out.push([n, v]); }
  return out;
}

t.test('InflightQueue behaves as an insertion-ordered Map under random traffic (gaps, deletes anywhere, growth, clear)', (t) => {
  let seed = 12345;
  const rnd = () => { seed = (seed * 1103515245 + 12345) & 0x7fffffff; return seed / 0x80000000; };
  const q = new InflightQueue<number>(16);
  const model = new Map<number, number>();
  // Start near 2^47 once: packet numbers are 48-bit, far above what bit operations could index.
  let next = 1;
  let mismatches = 0;
  for (let step = 0; step < 200_000; step++) {
    if (step === 100_000) { q.clear(); model.clear(); next = 2 ** 47 - 5000; }
    const r = rnd();
    if (r < 0.45) {
      next += rnd() < 0.2 ? 1 + Math.floor(rnd() * 5) : 1; // control packets leave gaps
      q.add(next, step); model.set(next, step);
    } else if (r < 0.75 && model.size) {
      // Mostly the oldest (acks, in order), sometimes one from the middle (selective ack, loss).
      const k = rnd() < 0.7 ? model.keys().next().value! : next - Math.floor(rnd() * 64);
      if (q.delete(k) !== model.delete(k)) mismatches++;
    } else if (r < 0.8) {
      if (q.delete(next + 1) || q.delete(-1)) mismatches++; // numbers never added
    } else if (r < 0.8002) {
      // A long stall: the oldest stays while thousands more are sent and acked (the ring must grow).
      for (let i = 0; i < 5000; i++) { next++; q.add(next, -i); if (i % 2) q.delete(next); else model.set(next, -i); }
    }
    if (q.size !== model.size) mismatches++;
    const first = model.values().next();
    if (q.first() !== (first.done ? undefined : first.value)) mismatches++;
    if (step % 997 === 0 && JSON.stringify(walk(q)) !== JSON.stringify([...model.entries()])) mismatches++;
  }
  t.equal(mismatches, 0, 'size, first(), get(), delete() and the ascending walk always match the Map');
  t.equal(JSON.stringify(walk(q)), JSON.stringify([...model.entries()]), 'final contents match');
  t.end();
});

t.test('InflightQueue: deleting during the walk, and numbers out of order are refused', (t) => {
  const q = new InflightQueue<string>(4);
  for (let n = 10; n < 60; n++) q.add(n, `p${n}`);
  const seen: number[] = [];
  for (let n = q.low; n < q.high; n++) { if (q.get(n) === undefined) continue; seen.push(n); if (n % 3 !== 0) q.delete(n); }
  t.equal(seen.length, 50, 'the walk sees every entry once while deleting');
  t.same(walk(q as unknown as InflightQueue<number>).map(([n]) => n), seen.filter((n) => n % 3 === 0), 'only the kept ones remain');
  t.equal(q.first(), 'p12');
  t.throws(() => q.add(59, 'x'), RangeError, 'a number not above the highest is refused');
  q.clear();
  t.equal(q.size, 0);
  t.equal(q.first(), undefined);
  q.add(100, 'a');
  t.equal(q.get(100), 'a');
  t.equal(q.low, 100);
  t.end();
});

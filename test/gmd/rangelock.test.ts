import t from 'tap';
import { RangeLock } from '../../src/gmd/rangelock.js';
import { encodeHeader, decodeHeader, HEADER_BYTES } from '../../src/gmd/protocol.js';
import { formatDuration, formatResync } from '../../src/gmd/format.js';

t.test('non-overlapping ranges are granted at once, overlapping ones in FIFO order', async (t) => {
  const l = new RangeLock();
  const order: string[] = [];
  l.acquire(0, 100, () => order.push('a'));
  l.acquire(100, 200, () => order.push('b'));
  l.acquire(50, 60, () => order.push('c'));      // waits for a
  l.acquire(55, 150, () => order.push('d'));     // waits for a, b and c (FIFO among overlapping)
  l.acquire(300, 400, () => order.push('e'));    // free
  t.same(order, ['a', 'b', 'e']);
  t.equal(l.held, 3);
  l.release(100, 200);
  t.same(order, ['a', 'b', 'e'], 'd still behind c');
  l.release(0, 100);
  t.same(order, ['a', 'b', 'e', 'c']);
  l.release(50, 60);
  t.same(order, ['a', 'b', 'e', 'c', 'd']);
  l.release(55, 150);
  l.release(300, 400);
  t.equal(l.held, 0);
  await l.lock(0, 10);
  t.equal(l.held, 1);
});

t.test('data header round trip and range checks', async (t) => {
  const h = encodeHeader(1, 1, 2 ** 40 + 4096, 65536);
  t.equal(h.length, HEADER_BYTES);
  t.same(decodeHeader(h, 2 ** 41), { kind: 1, flags: 1, offset: 2 ** 40 + 4096, length: 65536 });
  t.equal(decodeHeader(h, 2 ** 40), null, 'past the end of the device');
  t.equal(decodeHeader(Buffer.alloc(3), 100), null, 'short');
  t.equal(decodeHeader(encodeHeader(0, 0, 0, 0), 100), null, 'zero length');
});

t.test('progress formatting', async (t) => {
  t.equal(formatDuration(3725), '1:02:05');
  t.equal(formatDuration(null), '--:--');
  t.match(formatResync({ direction: 'push', peer: 'beta', totalBytes: 100, doneBytes: 50, leftBytes: 50, percent: 50, rateBps: 2e6, etaSec: 25, elapsedSec: 1, complete: false }),
    /resync to beta: 50.0% done, 50 B left, 2.0 MB\/s, eta 0:00:25/);
  t.match(formatResync({ direction: 'pull', peer: 'beta', totalBytes: 100, doneBytes: 100, leftBytes: 0, percent: 100, rateBps: 0, etaSec: 0, elapsedSec: 1, complete: true }),
    /from beta: complete/);
});

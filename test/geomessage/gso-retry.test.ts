import t from 'tap';
import { setTimeout as sleep } from 'node:timers/promises';
import { batchSocketsAvailable, openBatchSocket, type BatchSocket, type BatchTarget, type GsoPolicy } from '../../src/native/udp.js';
import { missingTools, needsRoot } from '../helpers/env.js';
import { runCmd } from '../helpers/proc.js';
import { ip } from './netns-peer.js';

/**
 * udp.c's GSO state machine at the batch socket, step by step. The socket sends over a veth whose MTU
 * the test sets: at 1400 every GSO message of 1472-byte segments is refused (EMSGSIZE), at 1500 it
 * passes. Short waits (300 ms doubling to 1200 ms) keep it quick; sleeps are longer than the wait in
 * question, so a slow machine cannot make a correct build fail. No receiver is needed: what is checked
 * is that the kernel took every packet (send returns the count) and what the socket reports.
 */
const skip = needsRoot() || missingTools('ip') || (!batchSocketsAvailable() && 'native addon without batch sockets');
const FIRST = 300, MAX = 1200;

/** n equal packets of `size` bytes back to back: one GSO message. */
function run(size: number, n: number) {
  const meta = new Uint32Array(2 * n);
  for (let i = 0; i < n; i++) { meta[2 * i] = i * size; meta[2 * i + 1] = size; }
  return { buf: Buffer.alloc(size * n), meta, n };
}
const BIG = run(1472, 10), SMALL = run(200, 10);

t.test('GSO after refusals: no spinning, a run of small segments does not pass the try, GSO back with the MTU and the wait starts over; "never" stays off', { skip, timeout: 30000 }, async (t) => {
  const tag = String(process.pid % 100000);
  const ns = `ggb-r-${tag}`, host = `ggbrh${tag}`, peer = `ggbrp${tag}`, net = `10.232.${process.pid % 250}`;
  t.teardown(async () => {
    await runCmd('ip', ['netns', 'del', ns]);
    await runCmd('ip', ['link', 'del', host]);
  });
  await ip('netns', 'add', ns);
  await ip('link', 'add', host, 'type', 'veth', 'peer', 'name', peer);
  await ip('link', 'set', peer, 'netns', ns);
  await ip('addr', 'add', `${net}.1/24`, 'dev', host);
  await ip('-n', ns, 'addr', 'add', `${net}.2/24`, 'dev', peer);
  await ip('link', 'set', host, 'mtu', '1400', 'up');
  await ip('-n', ns, 'link', 'set', peer, 'up');
  const mtu = (m: number) => ip('link', 'set', 'dev', host, 'mtu', String(m));

  const open = (gso: GsoPolicy) => {
    const s = openBatchSocket({ address: `${net}.1`, port: 0, bufferBytes: 1 << 20, key: null, onBatch: () => {}, gso, gsoWaitMs: { first: FIRST, max: MAX } });
    return { s, to: s.target(`${net}.2`, 9) };
  };
  const retry = open('retry'), never = open('never');
  t.teardown(() => { retry.s.close(); never.s.close(); });
  const send = (x: { s: BatchSocket; to: BatchTarget }, r: typeof BIG) => x.s.send(r.buf, r.meta, r.n, x.to);
  const state = (s: BatchSocket) => ({ gso: s.gso, refusals: s.gsoRefusals, reenabled: s.gsoReenabled });

  t.same(state(retry.s), { gso: true, refusals: 0, reenabled: 0 }, 'GSO on at open');
  t.equal(send(retry, BIG), 10, 'MTU 1400: the refused GSO message is sent again without GSO, all 10 packets taken');
  t.same(state(retry.s), { gso: false, refusals: 1, reenabled: 0 }, 'GSO off, the refusal counted');
  t.equal(send(never, BIG), 10, '"never": all taken too');

  // No spinning: sending as fast as possible, each wait allows one try (one refusal) at most.
  const t0 = Date.now();
  let sends = 0, taken = 0;
  while (Date.now() - t0 < 200) { taken += send(retry, BIG); sends++; }
  const elapsed = Date.now() - t0 + 50; // + the time before t0 since the refusal, generously
  let allowed = 1, acc = 0;
  for (let w = FIRST; acc + w <= elapsed; w = Math.min(2 * w, MAX)) { acc += w; allowed++; }
  t.equal(taken, 10 * sends, `every packet of ${sends} sends taken`);
  t.ok(retry.s.gsoRefusals <= allowed, `${retry.s.gsoRefusals} refusals in ${sends} sends over ~${elapsed} ms (at most ${allowed} allowed by the waits)`);
  const r0 = retry.s.gsoRefusals;

  // After the wait a try goes out. A run of small segments fits the MTU and is accepted, but says
  // nothing about the 1472-byte segments that were refused: GSO is not reported back on.
  await sleep(MAX + 100);
  t.equal(send(retry, SMALL), 10, 'small run taken');
  t.same(state(retry.s), { gso: false, refusals: r0, reenabled: 0 }, 'a GSO message of small segments does not count as GSO back');
  t.equal(send(retry, BIG), 10, 'large run taken (without GSO)');
  t.same(state(retry.s), { gso: false, refusals: r0 + 1, reenabled: 0 }, 'the large run refused: the try failed, counted');

  // The MTU comes back: after the (capped) wait the next try passes.
  await mtu(1500);
  await sleep(MAX + 100);
  t.equal(send(retry, BIG), 10, 'MTU 1500: taken');
  t.same(state(retry.s), { gso: true, refusals: r0 + 1, reenabled: 1 }, 'GSO back on, counted once');
  t.equal(send(never, BIG), 10, '"never": taken');
  t.same(state(never.s), { gso: false, refusals: 1, reenabled: 0 }, '"never": GSO stays off although the route takes it again');

  // The wait started over: a new refusal is tried again after FIRST, not after MAX.
  await mtu(1400);
  t.equal(send(retry, BIG), 10, 'MTU 1400 again: taken');
  t.same(state(retry.s), { gso: false, refusals: r0 + 2, reenabled: 1 }, 'refused again');
  await mtu(1500);
  await sleep(2 * FIRST);
  t.equal(send(retry, BIG), 10, 'MTU 1500: taken');
  t.same(state(retry.s), { gso: true, refusals: r0 + 2, reenabled: 2 }, `back after ${2 * FIRST} ms (< ${MAX}): the wait had started over at ${FIRST} ms`);
});

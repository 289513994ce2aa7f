/**
 * Unit tests of the congestion window (src/geomessage/congestion.ts), driven by a fake clock: the
 * window never reads time itself, so every step below happens at an exact, chosen millisecond.
 */
import t from 'tap';
import { CongestionWindow, INITIAL_WINDOW, PathMinRtt } from '../../src/geomessage/congestion.js';

/** A clock the test moves by hand. */
class FakeClock {
  now = 0;
  advance(ms: number): number { this.now += ms; return this.now; }
}

const PATH_MIN = 10; // ms
const SRTT = 10; // ms: the adjustment period

function windowOf(maxPackets = 4096, queueTargetMs = 20): CongestionWindow {
  return new CongestionWindow({ maxPackets, initialPackets: maxPackets, queueTargetMs });
}

t.test('starts at the initial window, bounded by the maximum and the caller\'s limit', (t) => {
  t.equal(windowOf().limit, INITIAL_WINDOW, '64 packets before any RTT measurement');
  t.equal(windowOf(40).limit, 40, 'never above the maximum');
  t.equal(new CongestionWindow({ maxPackets: 4096, initialPackets: 8, queueTargetMs: 20 }).limit, 8, 'never above windowPackets');
  t.end();
});

t.test('growth: by half per smoothed RTT while there is no queue, capped at the maximum', (t) => {
  const clock = new FakeClock();
  const w = windowOf();
  w.onAck(PATH_MIN, PATH_MIN, SRTT, clock.now, 0);
  t.equal(w.limit, 96, 'the first ack adjusts at once: 64 × 1.5');
  w.onAck(PATH_MIN, PATH_MIN, SRTT, clock.advance(SRTT - 1), 0);
  t.equal(w.limit, 96, 'no second adjustment within one SRTT');
  w.onAck(PATH_MIN, PATH_MIN, SRTT, clock.advance(1), 0);
  t.equal(w.limit, 144, 'one SRTT later: 96 × 1.5');
  const seen = [w.limit];
  for (let i = 0; i < 10; i++) { w.onAck(PATH_MIN, PATH_MIN, SRTT, clock.advance(SRTT), 0); seen.push(w.limit); }
  t.same(seen, [144, 216, 324, 486, 729, 1094, 1641, 2462, 3693, 4096, 4096], 'geometric growth (rounded up) until the maximum');
  t.end();
});

t.test('growth by 1/8 when the queue sits between half the target and the target', (t) => {
  const clock = new FakeClock();
  const w = windowOf();
  // target = max(queueTargetMs 20, path minimum 10) = 20; 12 ms of queue is in [10, 20].
  w.onAck(PATH_MIN + 12, PATH_MIN, SRTT, clock.now, 0);
  t.equal(w.limit, 72, '64 + 64/8');
  w.onAck(PATH_MIN + 20, PATH_MIN, SRTT, clock.advance(SRTT), 0);
  t.equal(w.limit, 81, 'exactly at the target still grows: 72 + 9');
  const small = new CongestionWindow({ maxPackets: 4096, initialPackets: 4, queueTargetMs: 20 });
  small.onAck(PATH_MIN + 12, PATH_MIN, SRTT, 0, 0);
  t.equal(small.limit, 5, 'at least one packet');
  t.end();
});

t.test('shrink on queueing delay: to 80% per SRTT while the interval\'s smallest sample shows a standing queue', (t) => {
  const clock = new FakeClock();
  const w = windowOf();
  const seen: number[] = [];
  for (let i = 0; i < 8; i++) { w.onAck(PATH_MIN + 21, PATH_MIN, SRTT, clock.now, 0); seen.push(w.limit); clock.advance(SRTT); }
  t.same(seen, [51, 40, 32, 25, 20, 16, 16, 16], '21 ms over a 20 ms target: ×0.8 (rounded down), never below 16');
  t.end();
});

t.test('the target is max(queueTargetMs, path minimum RTT): a long path tolerates a longer queue', (t) => {
  const longPath = 50;
  const w = windowOf();
  w.onAck(longPath + 45, longPath, 60, 0, 0);
  t.equal(w.limit, 72, '45 ms of queue on a 50 ms path is under the target: grows by 1/8');
  w.onAck(longPath + 51, longPath, 60, 60, 0);
  t.equal(w.limit, 57, '51 ms is over it: 72 × 0.8');
  const tight = windowOf(4096, 5);
  tight.onAck(PATH_MIN + 11, PATH_MIN, SRTT, 0, 0);
  t.equal(tight.limit, 51, 'queueTargetMs 5 on a 10 ms path: the path minimum (10) is the target, 11 ms shrinks');
  t.end();
});

t.test('one delay spike does not shrink: the smallest sample of the interval counts', (t) => {
  const clock = new FakeClock();
  const spiky = windowOf();
  spiky.onAck(PATH_MIN, PATH_MIN, SRTT, clock.now, 0); // adjusts: 96
  spiky.onAck(200, PATH_MIN, SRTT, clock.advance(3), 0);
  spiky.onAck(PATH_MIN, PATH_MIN, SRTT, clock.advance(3), 0);
  spiky.onAck(150, PATH_MIN, SRTT, clock.advance(4), 0); // adjusts with the interval's minimum, 10
  t.equal(spiky.limit, 144, 'spikes of 200 and 150 ms beside one clean sample: still grows');

  const clock2 = new FakeClock();
  const queued = windowOf();
  queued.onAck(PATH_MIN, PATH_MIN, SRTT, clock2.now, 0); // 96
  queued.onAck(200, PATH_MIN, SRTT, clock2.advance(3), 0);
  queued.onAck(150, PATH_MIN, SRTT, clock2.advance(7), 0);
  t.equal(queued.limit, 76, 'every sample of the interval high: a standing queue, 96 × 0.8');
  t.end();
});

t.test('loss: more than 20% of at least 20 packets shrinks; moderate random loss does not', (t) => {
  const run = (sent: number, lost: number): number => {
    const w = windowOf();
    w.onAck(PATH_MIN, PATH_MIN, SRTT, 0, 0); // 96, and a fresh interval
    for (let i = 0; i < sent; i++) w.onSent();
    for (let i = 0; i < lost; i++) w.onLost();
    w.onAck(PATH_MIN, PATH_MIN, SRTT, SRTT, 0);
    return w.limit;
  };
  t.equal(run(20, 5), 76, '25% of 20 lost (tail drop): 96 × 0.8 although there is no queue');
  t.equal(run(20, 4), 144, 'exactly 20% lost: grows');
  t.equal(run(100, 10), 144, '10% random loss on a WAN: grows');
  t.equal(run(19, 10), 144, 'fewer than 20 packets sent: too few to judge, grows');
  // The counters start over with each adjustment: old losses do not count twice.
  const w = windowOf();
  w.onAck(PATH_MIN, PATH_MIN, SRTT, 0, 0);
  for (let i = 0; i < 20; i++) w.onSent();
  for (let i = 0; i < 5; i++) w.onLost();
  w.onAck(PATH_MIN, PATH_MIN, SRTT, SRTT, 0);
  t.equal(w.limit, 76, 'the lossy interval shrinks');
  w.onAck(PATH_MIN, PATH_MIN, SRTT, 2 * SRTT, 0);
  t.equal(w.limit, 114, 'the next clean interval grows again');
  t.end();
});

t.test('timeouts: one expiry leaves the window, repeated expiries halve it (never below 32)', (t) => {
  const clock = new FakeClock();
  const w = windowOf();
  w.onAck(PATH_MIN, PATH_MIN, SRTT, clock.now, 0);
  w.onAck(PATH_MIN, PATH_MIN, SRTT, clock.advance(SRTT), 0);
  t.equal(w.limit, 144);
  w.onRtoExpired(1);
  t.equal(w.limit, 144, 'a single expiry is taken for one random loss');
  w.onRtoExpired(2);
  t.equal(w.limit, 72, 'the second expiry in a row halves');
  w.onRtoExpired(3);
  t.equal(w.limit, 36);
  w.onRtoExpired(4);
  t.equal(w.limit, 32, 'floor of 32 packets');
  w.onAck(PATH_MIN, PATH_MIN, SRTT, clock.advance(SRTT), 0);
  t.equal(w.limit, 48, 'acks flowing again grow it back');
  t.end();
});

t.test('restart (peer restarted) goes back to the initial window', (t) => {
  const w = windowOf();
  w.onAck(PATH_MIN, PATH_MIN, SRTT, 0, 0);
  t.equal(w.limit, 96);
  w.restart();
  t.equal(w.limit, INITIAL_WINDOW);
  const narrow = windowOf(40);
  narrow.restart();
  t.equal(narrow.limit, 40, 'bounded by the maximum');
  t.end();
});

t.test('PathMinRtt keeps the smallest sample and renews it after 10 s', (t) => {
  const clock = new FakeClock();
  const m = new PathMinRtt();
  m.update(10, clock.now);
  t.equal(m.ms, 10);
  m.update(15, clock.advance(5_000));
  t.equal(m.ms, 10, 'a larger sample within 10 s does not replace it');
  m.update(8, clock.advance(1_000));
  t.equal(m.ms, 8, 'a smaller one does');
  m.update(20, clock.advance(10_000));
  t.equal(m.ms, 8, 'exactly 10 s old: kept');
  m.update(20, clock.advance(1));
  t.equal(m.ms, 20, 'older than 10 s: the path may have changed, the current sample is the new minimum');
  t.end();
});

/**
 * Unit tests of path choice (src/geomessage/path.ts): which network a peer's packets go on, and when
 * a network counts as failed, driven by a fake clock (the rules take `now` as an argument).
 */
import t from 'tap';
import { bestPath, failingOnTimeouts, nextPath, silentTooLong, type PathView } from '../../src/geomessage/path.js';

class FakeClock {
  now = 0;
  advance(ms: number): number { this.now += ms; return this.now; }
}

interface TestPath { up: boolean; lastHeard: number; consecutiveTimeouts: number; rtt: { samples: number; srtt: number; rttvar: number } }

/** A path as the transport sees it: `srtt` undefined means no RTT sample yet. */
function path(o: { up?: boolean; srtt?: number; rttvar?: number; lastHeard?: number; timeouts?: number } = {}): TestPath {
  return {
    up: o.up ?? true,
    lastHeard: o.lastHeard ?? -Infinity,
    consecutiveTimeouts: o.timeouts ?? 0,
    rtt: { samples: o.srtt === undefined ? 0 : 1, srtt: o.srtt ?? 0, rttvar: o.rttvar ?? 0 },
  };
}

t.test('RTT ties: within 25% + 0.5 ms of the best the first network wins', (t) => {
  t.equal(bestPath([path({ srtt: 10 }), path({ srtt: 9 })], 0), 0, '10 vs 9 ms: a tie, the first');
  t.equal(bestPath([path({ srtt: 11.75 }), path({ srtt: 9 })], 0), 0, 'exactly 9 × 1.25 + 0.5: still a tie');
  t.equal(bestPath([path({ srtt: 11.76 }), path({ srtt: 9 })], 0), 1, 'just over: the faster second network');
  t.equal(bestPath([path({ srtt: 0.6 }), path({ srtt: 0.1 })], 0), 0, 'sub-millisecond paths: the 0.5 ms slack makes 0.6 vs 0.1 ms a tie');
  t.equal(bestPath([path({ srtt: 40 }), path({ srtt: 10 }), path({ srtt: 11 })], 0), 1, 'the first of the tied best, not the overall first');
  t.equal(bestPath([path(), path({ srtt: 10 })], 0), 0, 'a network without an RTT sample is not known to be worse');
  t.equal(bestPath([path({ srtt: 100 }), path()], 0), 0, 'a measured first network stays ahead of an unmeasured second');
  t.end();
});

t.test('failover: a network going down hands the traffic to the next up one; recovery hands it back', (t) => {
  const a = path({ srtt: 10 });
  const b = path({ srtt: 12 });
  const paths: PathView[] = [a, b];
  t.equal(bestPath(paths, -1), 0, 'both up: the first');
  a.up = false;
  t.equal(bestPath(paths, 0), 1, 'first down: the second, although slower');
  a.up = true;
  t.equal(bestPath(paths, 1), 0, 'first up again with a comparable RTT: back to the first');
  a.rtt.srtt = 30;
  t.equal(bestPath(paths, 1), 1, 'first up again but much slower: stays on the second');
  t.equal(bestPath([null, b], -1), 1, 'a peer not reachable on the first network uses the second');
  t.end();
});

t.test('no network up: the most recently heard one, else the next in turn', (t) => {
  t.equal(bestPath([path({ up: false, lastHeard: 5 }), path({ up: false, lastHeard: 7 })], 0), 1, 'the most recently heard');
  t.equal(bestPath([path({ up: false, lastHeard: 7 }), path({ up: false, lastHeard: 5 })], 1), 0);
  const silent = [path({ up: false }), null, path({ up: false })];
  t.equal(bestPath(silent, -1), 0, 'never heard, none chosen: the first configured');
  t.equal(bestPath(silent, 0), 2, 'never heard: rotate past the missing one');
  t.equal(bestPath(silent, 2), 0, 'and wrap around');
  t.equal(nextPath([null, null], 0), -1, 'nothing configured: none');
  t.equal(nextPath([path()], 0), 0, 'a single path rotates to itself');
  t.end();
});

t.test('keepalive verdict: an up network silent for longer than networkTimeoutMs is down', (t) => {
  const clock = new FakeClock();
  const timeout = 3000;
  const a = path({ lastHeard: clock.now });
  clock.advance(timeout);
  t.notOk(silentTooLong(a, clock.now, timeout), 'exactly networkTimeoutMs: not yet');
  clock.advance(1);
  t.ok(silentTooLong(a, clock.now, timeout), 'one ms later: down');
  a.lastHeard = clock.now;
  t.notOk(silentTooLong(a, clock.advance(10), timeout), 'a packet heard restarts the count');
  a.up = false;
  t.notOk(silentTooLong(a, clock.advance(10_000), timeout), 'a network already down is not failed again');
  t.end();
});

t.test('timer verdict: two timeouts in a row and silence beyond three RTOs fail a network early', (t) => {
  const clock = new FakeClock();
  const timeout = 3000;
  // quiet = min(networkTimeoutMs, max(50, 3 × (SRTT + 4 × RTTVAR))) = 3 × (10 + 8) = 54 ms
  const a = path({ srtt: 10, rttvar: 2, lastHeard: clock.now, timeouts: 1 });
  clock.advance(100);
  t.notOk(failingOnTimeouts(a, clock.now, timeout), 'one timeout: not yet, however long the silence');
  a.consecutiveTimeouts = 2;
  t.ok(failingOnTimeouts(a, clock.now, timeout), 'two in a row and 100 ms silent: failing');
  a.lastHeard = clock.advance(0);
  t.notOk(failingOnTimeouts(a, clock.advance(54), timeout), 'silent exactly 54 ms: not yet');
  t.ok(failingOnTimeouts(a, clock.advance(1), timeout), 'silent 55 ms: failing');
  const lan = path({ srtt: 0.2, rttvar: 0.05, lastHeard: 0, timeouts: 2 });
  t.notOk(failingOnTimeouts(lan, 50, timeout), 'a fast LAN path waits at least 50 ms');
  t.ok(failingOnTimeouts(lan, 51, timeout));
  const slow = path({ srtt: 500, rttvar: 200, lastHeard: 0, timeouts: 2 });
  t.notOk(failingOnTimeouts(slow, 300, 300), 'never later than networkTimeoutMs …');
  t.ok(failingOnTimeouts(slow, 301, 300), '… which caps the wait');
  a.up = false;
  t.notOk(failingOnTimeouts(a, clock.advance(1000), timeout), 'a network already down is not failed again');
  t.end();
});

t.test('a timeline: failover when the first network goes silent, recovery when it answers again', (t) => {
  const clock = new FakeClock();
  const timeout = 600;
  const a = path({ srtt: 5, lastHeard: clock.now });
  const b = path({ srtt: 6, lastHeard: clock.now });
  const paths = [a, b];
  let chosen = bestPath(paths, -1);
  t.equal(chosen, 0);
  // Only b is heard from now on (a's cable is cut).
  for (let i = 0; i < 7; i++) {
    clock.advance(100);
    b.lastHeard = clock.now;
    for (const p of paths) if (silentTooLong(p, clock.now, timeout)) p.up = false;
    chosen = bestPath(paths, chosen);
  }
  t.equal(a.up, false, 'a is down 700 ms after its last packet');
  t.equal(chosen, 1, 'traffic moved to b');
  // a answers a ping again (the transport marks it up on a pong or an ack).
  a.up = true;
  a.lastHeard = clock.advance(100);
  chosen = bestPath(paths, chosen);
  t.equal(chosen, 0, 'back on a, the preferred network');
  t.end();
});

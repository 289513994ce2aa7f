/**
 * CleanGate edges the main clean-gate test leaves open (its flushes are all started by hand), each
 * found by a mutant that survived it (docs/safety.md, "Mutation testing"): without any application
 * FLUSH the gate flushes on its own timer, again after a flush during which more writes completed,
 * and a failing flush at stop is reported and leaves its regions stale, never clean.
 */
import t from 'tap';
import { CleanGate } from '../../src/gmd/clean-gate.js';

function harness(intervalMs: number) {
  const ended: string[] = [];
  const flushes: Array<{ resolve: (ok: boolean) => void; reject: (e: Error) => void }> = [];
  const errors: unknown[] = [];
  const gate = new CleanGate({
    endWrite: (first, last, outcome) => ended.push(`${first}-${last}:${outcome}`),
    flushBoth: () => new Promise<boolean>((resolve, reject) => flushes.push({ resolve, reject })),
    onError: (e) => errors.push(e),
  }, intervalMs, 1000);
  return { gate, ended, flushes, errors };
}

/** Waits (up to 10 s) for `cond`: the gate's timer is the only thing that can make it true. */
async function until(cond: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`${what}: not within 10 s`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

t.test('with no application FLUSH the gate flushes on its timer, and again for writes done meanwhile', async (t) => {
  const { gate, ended, flushes } = harness(20);
  gate.done(1, 1);
  await until(() => flushes.length === 1, 'the timer\'s first flush');
  gate.done(2, 2);                                   // completes while that flush runs
  flushes[0]!.resolve(true);
  await until(() => ended.includes('1-1:both'), 'region 1 cleaned');
  await until(() => flushes.length === 2, 'a second flush for region 2, re-armed after the first');
  flushes[1]!.resolve(true);
  await until(() => ended.includes('2-2:both'), 'region 2 cleaned');
  t.same(ended, ['1-1:both', '2-2:both']);
  t.equal(gate.waiting, 0);
});

t.test('a flush failing at stop is reported and its regions end stale', async (t) => {
  const { gate, ended, flushes, errors } = harness(3_600_000);
  gate.done(7, 7);
  const d = gate.drain();
  await until(() => flushes.length === 1, 'drain\'s flush');
  flushes[0]!.reject(new Error('EIO on the local volume'));
  await d;
  t.equal(errors.length, 1, 'the failure reached onError');
  t.match(errors[0], { message: /EIO/ });
  t.same(ended, ['7-7:local-only'], 'region 7 stale, never clean');
});

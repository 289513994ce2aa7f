/**
 * Resource-level fencing in the GMD process (src/gmd/fence-gate.ts, DESIGN §9 rule 10): with
 * `[hageo] fencing = "resource-only"`, a promoted GMD that lost its peer does not acknowledge a
 * write the peer will not have until the cluster records the peer outdated. Here no cluster runs,
 * so the record cannot be written (crm_node -q finds no quorum): the write must fail after
 * fence_timeout, never succeed. Mirrored writes before the loss are acknowledged at once.
 * (Recording with quorum is exercised in a real Pacemaker cluster: see the failover tests.)
 */
import t from 'tap';
import { AgentCluster } from './agent-harness.js';
import { missingTools, nbdshEnv } from '../helpers/env.js';
import { runCmd } from '../helpers/proc.js';

async function nbdWrite(uri: string, offset: number, kib: number, fill: number): Promise<{ code: number; err: string; ms: number }> {
  const t0 = Date.now();
  const r = await runCmd('nbdsh', ['-u', uri, '-c', `h.pwrite(bytes([${fill}]) * ${kib * 1024}, ${offset})\nh.flush()`], { env: nbdshEnv(), timeoutMs: 120000 });
  return { code: r.code ?? -1, err: r.stderr, ms: Date.now() - t0 };
}

for (const mode of ['mwc', 'async'] as const) {
  t.test(`${mode}: writes the lost peer lacks are not acknowledged while it cannot be recorded outdated`, { skip: missingTools('nbdsh') }, async (t) => {
    const a = await AgentCluster.create(mode, 4 << 20, {}, ['fencing = "resource-only"', 'fence_timeout = 3']);
    t.teardown(() => a.cleanup());
    const uri = `nbd+unix:///${a.c.gmd}?socket=${a.c.nbdSock.alpha}`;
    t.equal((await a.action('beta', 'start')).code, 0, 'start beta');
    t.equal((await a.action('alpha', 'start')).code, 0, 'start alpha');
    t.equal((await a.action('alpha', 'promote')).code, 0, 'promote alpha');
    const mirrored = await nbdWrite(uri, 0, 64, 0x21);
    t.equal(mirrored.code, 0, `a mirrored write is acknowledged ${mirrored.err}`);
    t.equal((await a.haStatus('alpha')).fence.held, 0, 'and was not held');

    t.equal((await a.action('beta', 'stop')).code, 0, 'beta stops: alpha has no peer');
    const lost = await nbdWrite(uri, 1 << 20, 64, 0x42);
    t.not(lost.code, 0, 'a write beta will not have is NOT acknowledged (no quorum to record beta outdated)');
    const st = await a.haStatus('alpha');
    t.ok(st.fence.enabled, 'fencing is on (resource-only)');
    t.ok(st.fence.held >= 1, `the write was held for the record (held ${st.fence.held})`);
    t.ok(st.fence.failed >= 1, `and failed when the record could not be written (failed ${st.fence.failed})`);
    t.ok(st.localDirty, 'alpha\'s map keeps the region stale (a resync carries it, nothing was promised)');
    t.equal((await a.action('alpha', 'demote')).code, 0, 'demote alpha');
    t.equal((await a.action('alpha', 'stop')).code, 0, 'stop alpha');
  });
}

/**
 * ocf-tester (resource-agents) against ocf:georm:gmd, for each mode, with a real peer: machine
 * beta's GMD is started through the agent first, and ocf-tester drives alpha's instance through
 * every action (meta-data validated against ra-api-1.dtd, probes, start, monitor, notify, promote,
 * demote, repeated starts and stops). It runs as root (its permission check runs meta-data as nobody).
 */
import t from 'tap';
import { AgentCluster } from './agent-harness.js';
import { missingTools, needsRoot } from '../helpers/env.js';
import { runCmd } from '../helpers/proc.js';

/** tap's NODE_OPTIONS hooks write to .tap/, which ocf-tester's run as nobody may not: the agent runs without them. */
function agentEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, OCF_ROOT: '/usr/lib/ocf' };
  delete env.NODE_OPTIONS;
  return env;
}

for (const mode of ['sync', 'mwc', 'async'] as const) {
  t.test(`ocf-tester passes for a ${mode} GMD`, { skip: needsRoot() || missingTools('ocf-tester', 'xmllint') }, async (t) => {
    const a = await AgentCluster.create(mode);
    t.teardown(() => a.cleanup());
    const beta = await a.action('beta', 'start');
    t.equal(beta.code, 0, `beta started through the agent: ${beta.stderr}`);
    const r = await runCmd('ocf-tester', ['-n', 'gmd', '-o', `gmd=${a.c.gmd}`, '-o', `config=${a.c.cfgPath}`, '-o', 'machine=alpha', a.agent],
      { env: agentEnv(), timeoutMs: 300000 });
    t.equal(r.code, 0, `ocf-tester: ${r.stdout}\n${r.stderr}\nalpha log: ${a.log('alpha')}`);
    t.match(r.stdout, /passed all tests/, 'ocf-tester reports every test passed');
    const stop = await a.action('beta', 'stop');
    t.equal(stop.code, 0, 'beta stopped through the agent');
  });
}

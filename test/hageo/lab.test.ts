/**
 * The cluster lab (src/hageo/lab) runs a real two-node Pacemaker + Corosync cluster from what
 * `georm hageo corosync-conf` / `cib` render: the stock promotable ocf:pacemaker:Stateful comes up
 * promoted on the GMD's preferred machine; one cut link leaves membership alone (knet fails over);
 * every link cut is a membership change on both sides; a node killed with SIGKILL loses the
 * Promoted role to the survivor and, restarted, gets it back (the CIB's Promoted preference); and
 * the teardown leaves no process, namespace or mount. One cluster serves every step (CI time).
 */
import t from 'tap';
import { existsSync } from 'node:fs';
import { Lab, labUnavailable } from '../../src/hageo/lab/index.js';
import { preferredMachine, cloneId } from '../../src/hageo/cib.js';
import { parseXml, findFirst, nvpairs } from '../../src/hageo/xml.js';
import { nodesWithRole, type CrmStatus } from '../../src/hageo/crm-mon.js';
import { pidAlive } from '../../src/hageo/lab/procs.js';

const skip = await labUnavailable();
const online = (s: CrmStatus, name: string) => s.nodes.find((n) => n.name === name)?.online === true;

t.test('a two-node cluster in namespaces, from the rendered configuration', { skip }, async (t) => {
  const lab = await Lab.up({ nodes: 2, links: 2 });
  t.teardown(() => lab.down());
  const clone = cloneId('labgmd');
  const preferred = preferredMachine(lab.cfg.gmds[0]!);
  t.equal(preferred, 'node1', 'role none on both: the first machine listed is preferred');

  await t.test('comes up with Stateful promoted on the preferred node', async (t) => {
    for (const view of lab.nodes) {
      const s = await lab.waitStatus(view, (s) => nodesWithRole(s, clone, 'Promoted').length === 1 && nodesWithRole(s, clone, 'Unpromoted').length === 1,
        'one Promoted and one Unpromoted instance', 60000);
      t.ok(s.quorum, `${view}: partition with quorum`);
      t.same(s.nodes.map((n) => [n.name, n.online]), [['node1', true], ['node2', true]], `${view}: both nodes online`);
      t.same(nodesWithRole(s, clone, 'Promoted'), [preferred], `${view}: promoted on ${preferred}`);
      t.same(nodesWithRole(s, clone, 'Unpromoted'), ['node2']);
      t.match(s.resources[0], { agent: 'ocf:pacemaker:Stateful' });
    }
    // The running cluster uses what georm rendered: the cluster name and the clone's meta-attributes.
    const name = await lab.exec('node2', 'corosync-cmapctl', ['-g', 'totem.cluster_name']);
    t.match(name.stdout, /= georm-lab$/m);
    const cib = parseXml((await lab.exec('node1', 'cibadmin', ['--query', '--scope', 'resources'])).stdout);
    t.match(nvpairs(findFirst(cib, 'meta_attributes')), { promotable: 'true', 'promoted-max': '1', 'clone-node-max': '1', notify: 'true' });
    t.equal((await lab.exec('node1', 'uname', ['-n'])).stdout.trim(), 'node1', 'own UTS namespace');
  });

  await t.test('one link cut: knet moves to the other, membership stays', async (t) => {
    await lab.cutLink('node2', 0);
    const links = await lab.waitFor('node1 to see link 0 to node2 down', async () => {
      const l = await lab.linkStatus('node1');
      return l[0]?.peers.get(2) === 'disconnected' ? l : false;
    }, { timeoutMs: 30000 });
    t.equal(links[1]!.peers.get(2), 'connected', 'link 1 still connected');
    const s = await lab.crmMon('node1');
    t.ok(online(s, 'node2'), 'node2 still a member');
    t.same(nodesWithRole(s, clone, 'Promoted'), ['node1'], 'nothing moved');
    await lab.restoreLink('node2', 0);
    await lab.waitFor('link 0 back', async () => (await lab.linkStatus('node1'))[0]?.peers.get(2) === 'connected', { timeoutMs: 30000 });
  });

  await t.test('every link cut: both sides see the membership change; healed, both are back', async (t) => {
    await lab.isolate('node2');
    await lab.waitStatus('node1', (s) => !online(s, 'node2'), 'node2 gone', 60000);
    await lab.waitStatus('node2', (s) => !online(s, 'node1'), 'node1 gone', 60000);
    t.pass('membership change seen from both sides');
    await lab.heal('node2');
    await lab.waitAllOnline();
    const s = await lab.waitStatus('node1', (s) => nodesWithRole(s, clone, 'Promoted').length === 1, 'one Promoted instance again', 60000);
    t.same(nodesWithRole(s, clone, 'Promoted').length, 1, 'after the heal Pacemaker keeps one promoted instance');
  });

  await t.test('node1 killed: node2 is promoted; node1 restarted: the Promoted role comes back to it', async (t) => {
    await lab.waitStatus('node2', (s) => nodesWithRole(s, clone, 'Promoted')[0] === 'node1', 'promoted on node1 before the kill', 90000);
    await lab.killNode('node1');
    const s = await lab.waitStatus('node2', (s) => !online(s, 'node1') && nodesWithRole(s, clone, 'Promoted')[0] === 'node2', 'node2 promoted', 60000);
    t.same(nodesWithRole(s, clone, 'Promoted'), ['node2']);
    await lab.startNode('node1');
    await lab.waitAllOnline();
    const back = await lab.waitStatus('node2', (s) => nodesWithRole(s, clone, 'Promoted')[0] === 'node1', 'promoted on node1 again', 90000);
    t.same(nodesWithRole(back, clone, 'Unpromoted'), ['node2'], 'the preference (100) outweighs stickiness (1): fail-back to node1');
  });

  await t.test('teardown leaves no process, namespace or mount', async (t) => {
    const pids = lab.state.nodes.flatMap((n) => [n.pids.corosync, n.pids.pacemakerd]).filter((p): p is number => p !== undefined);
    t.ok(pids.length >= 4 && pids.every(pidAlive), 'daemons running before');
    t.same(await lab.down(), [], 'down reports no problem');
    t.same(lab.leftovers(), [], 'no process in the lab namespaces, no lab netns, no lab mount');
    t.notOk(pids.some(pidAlive), 'every daemon pid gone');
    t.notOk(existsSync(lab.state.pinsDir), 'pins directory removed');
    t.notOk(existsSync(lab.dir), 'state directory removed');
  });
});

/**
 * The cluster lab (src/hageo/lab) runs a real two-node Pacemaker + Corosync cluster from what
 * `georm hageo corosync-conf` / `cib` render (one geographic network + the [hageo] heartbeat path):
 * the stock promotable ocf:pacemaker:Stateful comes up promoted on the GMD's preferred node, and
 * `georm hageo status` inside a node says so; a CIB rendered for a second GMD loads into the running
 * cluster and promotes on that GMD's primary; the geographic link cut leaves membership alone (knet
 * moves to the heartbeat link); every link cut is a membership change on both sides; a node killed
 * with SIGKILL loses the Promoted role to the survivor and, restarted, gets it back (the CIB's
 * Promoted preference); the teardown leaves no process, namespace or mount. One cluster serves every
 * step (CI time).
 */
import t from 'tap';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { Lab, labUnavailable } from '../../src/hageo/lab/index.js';
import { preferredMachine, cloneId } from '../../src/hageo/cib.js';
import { parseXml, findFirst, nvpairs } from '../../src/hageo/xml.js';
import { nodesWithRole, type CrmStatus } from '../../src/hageo/crm-mon.js';
import { pidAlive } from '../../src/hageo/lab/procs.js';
import type { HageoStatus } from '../../src/hageo/status.js';
import { GEORM_BIN, ROOT } from '../helpers/env.js';
import { runCmd } from '../helpers/proc.js';
import { join } from 'node:path';

const skip = await labUnavailable();
const online = (s: CrmStatus, name: string) => s.nodes.find((n) => n.name === name)?.online === true;

t.test('a lab directory the nodes would not see is refused', { skip }, async (t) => {
  await t.rejects(Lab.up({ dir: '/tmp/georm-lab-x' }), { code: 'LAB_ERR_USAGE', message: /must not be under \/tmp: every node mounts its own/ });
  await t.rejects(Lab.up({ dir: '/run/x' }), { code: 'LAB_ERR_USAGE', message: /under \/run/ });
  await t.rejects(Lab.up({ nodes: 1 }), { code: 'LAB_ERR_USAGE', message: /2–8 nodes/ });
  t.notOk(existsSync('/tmp/georm-lab-x'), 'nothing created');
});

t.test('a two-node cluster in namespaces, from the rendered configuration', { skip }, async (t) => {
  // One geographic network plus the heartbeat-only path: two knet links, the second from [hageo].
  const lab = await Lab.up({ nodes: 2, links: 1, heartbeat: true });
  t.teardown(() => lab.down());
  const clone = cloneId('labgmd');
  const status = async (view: string): Promise<HageoStatus> => {
    const r = await lab.exec(view, process.execPath, [GEORM_BIN, 'hageo', 'status', '--json', '--config', lab.configPath]);
    if (r.code !== 0) throw new Error(`georm hageo status on ${view}: ${r.stderr}`);
    return JSON.parse(r.stdout) as HageoStatus;
  };
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

    // georm hageo status, run inside a node, reads the same.
    const st = await status('node2');
    t.match(st, { cluster: 'georm-lab', quorum: true, nodes: [{ name: 'node1', state: 'online' }, { name: 'node2', state: 'online' }],
      gmds: [{ name: 'labgmd', clone, promoted: ['node1'], unpromoted: ['node2'], failed: [] }] });
    t.same(st.links, [{ link: 0, source: 'geo1', peers: { node1: 'connected' } }, { link: 1, source: 'heartbeat', peers: { node1: 'connected' } }]);
    const text = await lab.exec('node1', process.execPath, [GEORM_BIN, 'hageo', 'status', '--config', lab.configPath]);
    t.match(text.stdout, /^GMD labgmd \(gmd-labgmd-clone\): promoted on node1; unpromoted on node2$/m);

    // The command-line wrapper works on the same lab from another process, through DIR/lab.json.
    const cli = (...a: string[]) => runCmd(process.execPath, [join(ROOT, 'dist', 'scripts', 'cluster', 'lab.js'), ...a]);
    const ex = await cli('exec', '--dir', lab.dir, 'node2', 'crm_node', '-n');
    t.equal(ex.stdout.trim(), 'node2', 'lab.js exec runs inside the node');
    const views = JSON.parse((await cli('status', '--dir', lab.dir)).stdout) as Record<string, CrmStatus>;
    t.same(Object.keys(views), ['node1', 'node2']);
    t.same(nodesWithRole(views.node1!, clone, 'Promoted'), ['node1'], 'lab.js status');
  });

  await t.test('a CIB rendered for a second GMD loads into the running cluster with cibadmin --replace --scope configuration', async (t) => {
    // The cluster file with a second GMD, async with node2 primary: preferred on node2.
    const text = readFileSync(lab.configPath, 'utf8');
    const gmd = text.slice(text.indexOf('[[gmd]]'), text.indexOf('[hageo]'));
    const second = gmd.replace(/labgmd/g, 'second').replace('minor = 10', 'minor = 11').replace('mode = "mwc"', 'mode = "async"')
      .replace('role = "none"', 'role = "secondary"').replace('role = "none"', 'role = "primary"');
    const twoPath = join(lab.dir, 'two.toml');
    writeFileSync(twoPath, text.replace('[hageo]', `${second}\n[hageo]`));
    const r = await runCmd(process.execPath, [GEORM_BIN, 'hageo', 'cib', '--config', twoPath, '--no-stonith', '--agent', 'ocf:pacemaker:Stateful']);
    t.equal(r.code, 0, r.stderr);
    writeFileSync(join(lab.dir, 'two.xml'), r.stdout);
    // A whole CIB is older than the running one (epoch 1): --replace alone is refused, --scope configuration takes its configuration.
    const whole = await lab.exec('node2', 'cibadmin', ['--replace', '--xml-file', join(lab.dir, 'two.xml')]);
    t.not(whole.code, 0, `whole CIB refused: ${whole.stderr.trim()}`);
    const conf = await lab.exec('node2', 'cibadmin', ['--replace', '--scope', 'configuration', '--xml-file', join(lab.dir, 'two.xml')]);
    t.equal(conf.code, 0, conf.stderr);
    const s = await lab.waitStatus('node1', (s) => nodesWithRole(s, cloneId('second'), 'Promoted').length === 1, 'the second GMD promoted', 60000);
    t.same(nodesWithRole(s, cloneId('second'), 'Promoted'), ['node2'], 'promoted on its primary, node2');
    t.same(nodesWithRole(s, clone, 'Promoted'), ['node1'], 'the first GMD did not move');
  });

  await t.test('the geographic link cut: knet moves to the heartbeat path, membership stays', async (t) => {
    await lab.cutLink('node2', 0);
    const links = await lab.waitFor('node1 to see link 0 to node2 down', async () => {
      const l = await lab.linkStatus('node1');
      return l[0]?.peers.get(2) === 'disconnected' ? l : false;
    }, { timeoutMs: 30000 });
    t.equal(links[1]!.peers.get(2), 'connected', 'link 1 (heartbeat) still connected');
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
    const st = await status('node1');
    t.match(st, { nodes: [{ name: 'node1', state: 'online' }, { name: 'node2', state: 'offline' }] }, 'status: node2 offline');
    t.same(st.links!.map((l) => l.peers.node2), ['disconnected', 'disconnected'], 'status: both links to node2 (geo1, heartbeat) disconnected');
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

/**
 * `georm hageo corosync-conf` and `georm hageo cib`: the rendered files have the structure the
 * cluster file asks for (parsed, not compared as text), Corosync and Pacemaker accept them
 * (`corosync -t` inside a network namespace holding a node's address; `crm_verify`), and bad
 * `[hageo]` input is refused with file:line:col errors.
 */
import t from 'tap';
import { writeFileSync, chmodSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { parseConfig, ConfigError } from '../../src/config/index.js';
import { renderCorosyncConf } from '../../src/hageo/corosync-conf.js';
import { renderCib, cloneId, primitiveId, PROMOTED_PREFERENCE } from '../../src/hageo/cib.js';
import { parseXml, findAll, findFirst, nvpairs } from '../../src/hageo/xml.js';
import { GEORM_BIN, missingTools, needsRoot, tempDir } from '../helpers/env.js';
import { runCmd } from '../helpers/proc.js';
import { lineOf } from '../config/sample.js';
import { HAGEO_SAMPLE, HAGEO_SAMPLE_3, parseCorosyncConf, type ConfBlock } from './sample.js';

const blocks = (b: ConfBlock, k: string) => (b[k] ?? []) as ConfBlock[];

function errorOf(text: string): ConfigError {
  try { parseConfig(text, 'c.toml'); } catch (e) { if (e instanceof ConfigError) return e; throw e; }
  throw new Error('expected a ConfigError');
}

t.test('[hageo] parses with its values; a file without it gets the defaults', async (t) => {
  const c = parseConfig(HAGEO_SAMPLE, '/etc/georm/georm.toml');
  t.same(c.hageo, { clusterName: 'hsprod', fencing: 'resource-only', fenceTimeout: 20, token: 2000,
    heartbeat: [{ machine: 'alpha', address: '10.61.9.1' }, { machine: 'beta', address: '10.61.9.2' }] });
  const bare = parseConfig(HAGEO_SAMPLE.slice(0, HAGEO_SAMPLE.indexOf('[hageo]')), 'x.toml');
  t.same(bare.hageo, { clusterName: 'georm', fencing: 'resource-only', fenceTimeout: 30, token: 3000, heartbeat: [] });
});

t.test('corosync.conf: a knet link per geographic network then the heartbeat, nodes = machines, two_node', async (t) => {
  const conf = parseCorosyncConf(renderCorosyncConf(parseConfig(HAGEO_SAMPLE, '/etc/georm/georm.toml'), { authkey: '/k/authkey' }));
  const totem = blocks(conf, 'totem')[0]!;
  t.match(totem, { version: '2', cluster_name: 'hsprod', transport: 'knet', token: '2000', link_mode: 'passive',
    crypto_cipher: 'aes256', crypto_hash: 'sha256', keyfile: '/k/authkey' });
  const links = blocks(totem, 'interface');
  t.same(links.map((l) => l.linknumber), ['0', '1', '2'], 'geo1, geo2, heartbeat');
  const prio = links.map((l) => Number(l.knet_link_priority));
  t.ok(prio[0]! > prio[1]! && prio[1]! > prio[2]!, `the first geographic network is preferred, the heartbeat last (${prio})`);
  const nodes = blocks(blocks(conf, 'nodelist')[0]!, 'node');
  t.same(nodes.map((n) => [n.name, n.nodeid, n.ring0_addr, n.ring1_addr, n.ring2_addr]), [
    ['alpha', '1', '10.61.1.1', '10.61.2.1', '10.61.9.1'],
    ['beta', '2', '10.61.1.2', '10.61.2.2', '10.61.9.2'],
  ]);
  t.match(blocks(conf, 'quorum')[0], { provider: 'corosync_votequorum', two_node: '1' });
  t.match(blocks(conf, 'logging')[0], { to_stderr: 'yes', to_logfile: 'yes', logfile: '/var/log/corosync/corosync.log' });

  const three = parseCorosyncConf(renderCorosyncConf(parseConfig(HAGEO_SAMPLE_3, 'x.toml')));
  t.equal(blocks(blocks(three, 'nodelist')[0]!, 'node').length, 3);
  t.notOk('two_node' in blocks(three, 'quorum')[0]!, 'two_node only for a two-node cluster');
  t.equal(blocks(blocks(three, 'totem')[0]!, 'totem').length, 0);
});

t.test('corosync.conf: a network not on every machine is no link; without any, or with shared addresses, it is refused', async (t) => {
  const onlyAlphaOnGeo2 = HAGEO_SAMPLE.slice(0, HAGEO_SAMPLE.indexOf('[hageo]'))
    .replace(/(name = "beta"[\s\S]*?)\s+\[\[machine\.interface\]\]\s+network = "geo2"\s+address = "10\.61\.2\.2"\s+port = 7500/, '$1');
  const conf = renderCorosyncConf(parseConfig(onlyAlphaOnGeo2, 'x.toml'));
  t.match(conf, /# networks not used as links \(not on every machine\): geo2/);
  t.same(blocks(blocks(parseCorosyncConf(conf), 'totem')[0]!, 'interface').map((l) => l.linknumber), ['0']);

  // The loopback demo shape (both machines on 127.0.0.1) is a valid georm file without [hageo]…
  const shared = HAGEO_SAMPLE.slice(0, HAGEO_SAMPLE.indexOf('[hageo]')).replace(/10\.61\.1\.2/, '10.61.1.1');
  const cfg = parseConfig(shared, 'shared.toml');
  // …but no Corosync configuration.
  t.throws(() => renderCorosyncConf(cfg), { code: 'HAGEO_ERR_CONFIG',
    message: /machines 'alpha' and 'beta' both have address 10\.61\.1\.1 on network 'geo1': Corosync needs a distinct address/ });
});

t.test('bad [hageo] input: line-precise errors', async (t) => {
  const cases: Array<[string, string, RegExp, number]> = [
    ['fencing = "resource-only"', 'fencing = "stonith"', /hageo\.fencing: fencing must be one of resource-only, none/, lineOf(HAGEO_SAMPLE, 'fencing =')],
    ['token = 2000', 'token = 100', /hageo\.token: token must be 500–60000 ms/, lineOf(HAGEO_SAMPLE, 'token =')],
    ['fence_timeout = 20', 'fence_timeout = 2.5', /fence_timeout must be whole seconds/, lineOf(HAGEO_SAMPLE, 'fence_timeout =')],
    ['cluster_name = "hsprod"', 'cluster_name = "hs prod"', /cluster_name must be 1–64 letters/, lineOf(HAGEO_SAMPLE, 'cluster_name =')],
    ['token = 2000', 'token = 2000\ntokn = 5', /unknown key 'tokn'/, lineOf(HAGEO_SAMPLE, 'token =') + 1],
    ['machine = "beta"\n  address = "10.61.9.2"', 'machine = "delta"\n  address = "10.61.9.2"',
      /hageo\.heartbeat\[1\]\(delta\)\.machine: unknown machine 'delta'/, lineOf(HAGEO_SAMPLE, 'machine = "beta"', 'hageo.heartbeat')],
    ['address = "10.61.9.2"', 'address = "10.61.9.1"', /heartbeat address 10\.61\.9\.1 is already machine 'alpha''s/, lineOf(HAGEO_SAMPLE, 'address = "10.61.9.2"')],
    ['address = "10.61.9.2"', 'address = "10.61.2.2"', /is machine 'beta''s address on network 'geo2': the heartbeat path must be a different path/, lineOf(HAGEO_SAMPLE, 'address = "10.61.9.2"')],
  ];
  for (const [from, to, re, line] of cases) {
    t.ok(HAGEO_SAMPLE.includes(from), `fixture has ${from}`);
    const e = errorOf(HAGEO_SAMPLE.replace(from, to));
    t.match(e.message, re, to);
    t.match(e.message, new RegExp(`^c\\.toml:${line}:\\d+: `, 'm'), `${to}: at line ${line}`);
  }
  // A heartbeat address for alpha only: the link would not span every node (corosync -t: "Not all nodes have the same number of links").
  const oneHeartbeat = HAGEO_SAMPLE.replace(/\s+\[\[hageo\.heartbeat\]\]\s+machine = "beta"\s+address = "10\.61\.9\.2"/, '');
  t.match(errorOf(oneHeartbeat).message, new RegExp(`^c\\.toml:${lineOf(HAGEO_SAMPLE, '[[hageo.heartbeat]]')}:\\d+: hageo\\.heartbeat: the heartbeat link needs an address on every machine .*missing: beta`, 'm'));
  // beta's heartbeat entry names alpha a second time.
  t.match(errorOf(HAGEO_SAMPLE.replace('machine = "beta"\n  address = "10.61.9.2"', 'machine = "alpha"\n  address = "10.61.9.2"')).message,
    /hageo\.heartbeat\[1\]\(alpha\)\.machine: machine 'alpha' has two heartbeat addresses/);
  // No network on every machine: alpha only on geo1, beta only on geo2.
  const split = HAGEO_SAMPLE.replace(/\s+\[\[machine\.interface\]\]\s+network = "geo2"\s+address = "10\.61\.2\.1"\s+port = 7400/, '')
    .replace(/\s+\[\[machine\.interface\]\]\s+network = "geo1"\s+address = "10\.61\.1\.2"\s+port = 7500/, '');
  t.match(errorOf(split).message, new RegExp(`^c\\.toml:${lineOf(split, '[hageo]')}:1: hageo: no network has an interface on every machine`, 'm'));
  // Nine links (eight networks + heartbeat): more than knet allows.
  let many = HAGEO_SAMPLE;
  for (let n = 3; n <= 8; n++) {
    many = many.replace('[[machine]]', `[[network]]\nname = "geo${n}"\n\n[[machine]]`)
      .replace('name = "alpha"\nsite = "east"', `name = "alpha"\nsite = "east"\n  [[machine.interface]]\n  network = "geo${n}"\n  address = "10.62.${n}.1"\n  port = 7400`)
      .replace('name = "beta"\nsite = "west"', `name = "beta"\nsite = "west"\n  [[machine.interface]]\n  network = "geo${n}"\n  address = "10.62.${n}.2"\n  port = 7500`);
  }
  t.match(errorOf(many).message, /hageo: 9 Corosync links; knet allows at most 8/);
  t.doesNotThrow(() => parseConfig(many.replace(/\s*\[\[hageo\.heartbeat\]\][^[]*/g, '\n'), 'c.toml'), 'eight links are fine');
  // With [hageo] the file is a Corosync cluster: a shared address is reported at the second machine's address line.
  const shared = HAGEO_SAMPLE.replace('address = "10.61.1.2"', 'address = "10.61.1.1"');
  const e = errorOf(shared);
  t.match(e.message, new RegExp(`^c\\.toml:${lineOf(HAGEO_SAMPLE, 'address = "10.61.1.2"')}:3: machine\\[1\\]\\(beta\\)\\.interface\\[0\\]\\(geo1\\)\\.address: machines 'alpha' and 'beta' both have address 10\\.61\\.1\\.1`, 'm'));
});

t.test('CIB: one promotable clone per GMD with the agent, its params, per-role monitors and the Promoted preference', async (t) => {
  const cfg = parseConfig(HAGEO_SAMPLE, '/etc/georm/georm.toml');
  const cib = parseXml(renderCib(cfg));
  t.equal(cib.name, 'cib');
  const props = nvpairs(findFirst(cib, 'cluster_property_set'));
  t.equal(props['cluster-name'], 'hsprod');
  t.notOk('stonith-enabled' in props, 'production CIB leaves fencing on (Pacemaker default)');
  const clones = findAll(cib, 'clone');
  t.same(clones.map((c) => c.attrs.id), [cloneId('data10gmd'), cloneId('logs11')]);
  for (const [clone, gmd] of [[clones[0]!, 'data10gmd'], [clones[1]!, 'logs11']] as const) {
    t.match(nvpairs(findFirst(clone, 'meta_attributes')), { promotable: 'true', 'promoted-max': '1', 'promoted-node-max': '1',
      'clone-max': '2', 'clone-node-max': '1', notify: 'true', 'resource-stickiness': '1' });
    const prim = findFirst(clone, 'primitive')!;
    t.same(prim.attrs, { id: primitiveId(gmd), class: 'ocf', provider: 'georm', type: 'gmd' });
    t.same(nvpairs(findFirst(prim, 'instance_attributes')), { gmd, config: '/etc/georm/georm.toml' });
    const ops = findAll(prim, 'op').map((o) => o.attrs);
    const timeout = (n: string) => ops.find((o) => o.name === n)?.timeout;
    t.same([timeout('start'), timeout('stop'), timeout('promote'), timeout('demote'), timeout('notify')], ['240s', '100s', '90s', '90s', '90s']);
    const monitors = ops.filter((o) => o.name === 'monitor');
    t.same(monitors.map((m) => m.role).sort(), ['Promoted', 'Unpromoted']);
    t.not(monitors[0]!.interval, monitors[1]!.interval, 'monitor intervals differ per role');
  }
  const locs = findAll(cib, 'rsc_location').map((l) => l.attrs);
  t.same(locs, [
    { id: `${cloneId('data10gmd')}-promoted-on-alpha`, rsc: cloneId('data10gmd'), role: 'Promoted', node: 'alpha', score: String(PROMOTED_PREFERENCE) },
    { id: `${cloneId('logs11')}-promoted-on-beta`, rsc: cloneId('logs11'), role: 'Promoted', node: 'beta', score: String(PROMOTED_PREFERENCE) },
  ], 'role none: the first machine listed; otherwise the primary');

  const test = parseXml(renderCib(cfg, { noStonith: true, dcDeadtime: '2s', nodeConfig: '/n/g.toml', agent: 'ocf:pacemaker:Stateful' }));
  t.match(nvpairs(findFirst(test, 'cluster_property_set')), { 'stonith-enabled': 'false', 'dc-deadtime': '2s' });
  t.same(findFirst(test, 'primitive')!.attrs, { id: primitiveId('data10gmd'), class: 'ocf', provider: 'pacemaker', type: 'Stateful' });
  t.equal(findFirst(findFirst(test, 'primitive')!, 'instance_attributes'), undefined, 'no georm params for another agent');
  t.same(nvpairs(findFirst(parseXml(renderCib(cfg, { nodeConfig: '/n/g.toml' })), 'instance_attributes')).config, '/n/g.toml');
  t.throws(() => renderCib(cfg, { agent: 'Stateful' }), { code: 'HAGEO_ERR_USAGE' });
  t.throws(() => renderCib(cfg, { dcDeadtime: 'soon' }), { code: 'HAGEO_ERR_USAGE' });

  // Three machines, GMDs on two: a -INFINITY rule keeps each clone off gamma.
  const three = parseXml(renderCib(parseConfig(HAGEO_SAMPLE_3, 'x.toml')));
  const rules = findAll(three, 'rule');
  t.equal(rules.length, 2);
  t.equal(rules[0]!.attrs.score, '-INFINITY');
  t.same(findAll(rules[0]!, 'expression').map((e) => [e.attrs.attribute, e.attrs.operation, e.attrs.value]), [['#uname', 'ne', 'alpha'], ['#uname', 'ne', 'beta']]);
});

t.test('crm_verify accepts the rendered CIB; without --no-stonith it says fencing is missing', { skip: missingTools('crm_verify') }, async (t) => {
  const { dir, cleanup } = tempDir('georm-hageo-cib-');
  t.teardown(cleanup);
  const cfgPath = join(dir, 'georm.toml');
  writeFileSync(cfgPath, HAGEO_SAMPLE_3);
  const cli = (...args: string[]) => runCmd(process.execPath, [GEORM_BIN, 'hageo', 'cib', '--config', cfgPath, ...args]);
  const test = await cli('--no-stonith', '--dc-deadtime', '2s');
  t.equal(test.code, 0, test.stderr);
  writeFileSync(join(dir, 'test.xml'), test.stdout);
  const ok = await runCmd('crm_verify', ['--xml-file', join(dir, 'test.xml'), '-V']);
  t.equal(ok.code, 0, `crm_verify --xml-file: ${ok.stderr}`);
  const live = await runCmd('crm_verify', ['-L', '-V'], { env: { ...process.env, CIB_file: join(dir, 'test.xml') } });
  t.equal(live.code, 0, `CIB_file=… crm_verify -L: ${live.stderr}`);

  const prod = await cli();
  writeFileSync(join(dir, 'prod.xml'), prod.stdout);
  const noFence = await runCmd('crm_verify', ['--xml-file', join(dir, 'prod.xml'), '-V']);
  t.not(noFence.code, 0, 'a production CIB without a fence device does not verify');
  t.match(noFence.stderr, /STONITH/);

  // crm_verify is a real check: two monitors with the same interval are refused.
  writeFileSync(join(dir, 'dup.xml'), test.stdout.replace(/interval="31s"/g, 'interval="29s"'));
  const dup = await runCmd('crm_verify', ['--xml-file', join(dir, 'dup.xml'), '-V']);
  t.not(dup.code, 0, `duplicate monitor interval refused: ${dup.stderr.split('\n')[0]}`);
});

t.test('corosync -t accepts the rendered corosync.conf on a node, and refuses a broken one; status without a cluster', { skip: needsRoot() || missingTools('corosync', 'crm_mon', 'ip', 'nsenter') }, async (t) => {
  const { dir, cleanup } = tempDir('georm-hageo-cs-');
  t.teardown(cleanup);
  const cfgPath = join(dir, 'georm.toml');
  writeFileSync(cfgPath, HAGEO_SAMPLE);
  writeFileSync(join(dir, 'authkey'), randomBytes(256));
  chmodSync(join(dir, 'authkey'), 0o400);
  const r = await runCmd(process.execPath, [GEORM_BIN, 'hageo', 'corosync-conf', '--config', cfgPath, '--authkey', join(dir, 'authkey'), '--logfile', join(dir, 'cs.log')]);
  t.equal(r.code, 0, r.stderr);
  writeFileSync(join(dir, 'corosync.conf'), r.stdout);

  // corosync -t also finds the local node by its ring0 address: give a namespace beta's geo1 address.
  const ns = `georm-cst-${process.pid}-${randomBytes(3).toString('hex')}`;
  const ip = (...a: string[]) => runCmd('ip', a);
  t.equal((await ip('netns', 'add', ns)).code, 0);
  t.teardown(() => ip('netns', 'del', ns));
  await ip('-n', ns, 'link', 'add', 'va', 'type', 'veth', 'peer', 'name', 'vb');
  await ip('-n', ns, 'addr', 'add', '10.61.1.2/24', 'dev', 'va');
  await ip('-n', ns, 'link', 'set', 'va', 'up');
  await ip('-n', ns, 'link', 'set', 'vb', 'up'); // both ends up, as on a node with its link
  const inNs = (conf: string) => runCmd('nsenter', [`--net=/run/netns/${ns}`, '--', 'corosync', '-t', '-c', conf]);
  const good = await inNs(join(dir, 'corosync.conf'));
  t.equal(good.code, 0, `corosync -t: ${good.stderr}`);
  // The heartbeat address of one node removed: corosync refuses what validate.ts refuses.
  writeFileSync(join(dir, 'bad.conf'), r.stdout.replace(/\n\s*ring2_addr: 10\.61\.9\.2/, ''));
  const bad = await inNs(join(dir, 'bad.conf'));
  t.not(bad.code, 0);
  t.match(bad.stderr, /Not all nodes have the same number of links/);

  // No cluster in this namespace (libqb's sockets are per network namespace): status says so, exit 2.
  const st = await runCmd('nsenter', [`--net=/run/netns/${ns}`, '--', process.execPath, GEORM_BIN, 'hageo', 'status', '--config', cfgPath]);
  t.equal(st.code, 2, 'georm hageo status without Pacemaker: exit 2');
  t.match(st.stderr, /crm_mon failed \(is Pacemaker running on this node\?\)/);
  t.equal(st.stdout, '');
});

t.test('CLI: a file Corosync cannot use gets the reason and exit 1', async (t) => {
  const { dir, cleanup } = tempDir('georm-hageo-cli-');
  t.teardown(cleanup);
  const p = join(dir, 'loop.toml');
  writeFileSync(p, HAGEO_SAMPLE.slice(0, HAGEO_SAMPLE.indexOf('[hageo]')).replace(/10\.61\.2\.2/, '10.61.2.1'));
  const r = await runCmd(process.execPath, [GEORM_BIN, 'hageo', 'corosync-conf', '--config', p]);
  t.equal(r.code, 1);
  t.equal(r.stdout, '', 'nothing half-written on stdout');
  t.match(r.stderr, /cannot make a Corosync configuration:\n\s+machines 'alpha' and 'beta' both have address 10\.61\.2\.1 on network 'geo2'/);
  const bad = await runCmd(process.execPath, [GEORM_BIN, 'hageo', 'cib', '--config', join(dir, 'missing.toml')]);
  t.equal(bad.code, 1);
  t.match(bad.stderr, /missing\.toml:1:1: cannot read the configuration/);
});

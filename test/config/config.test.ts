import t from 'tap';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from '../helpers/env.js';
import {
  parseConfig, loadConfig, renderConfig, findMachine, findGmd, gmdMachine, peersOf, localPeersOf,
  localMachine, endpointsOf, ConfigError, type ClusterConfig,
} from '../../src/config/index.js';
import { SAMPLE, lineOf } from './sample.js';

function errorOf(text: string, file = 'georm.toml'): ConfigError {
  try {
    parseConfig(text, file);
  } catch (e) {
    if (e instanceof ConfigError) return e;
    throw e;
  }
  throw new Error('expected a ConfigError');
}

t.test('the contract example parses with defaults applied', async (t) => {
  const c = parseConfig(SAMPLE, '/etc/georm/georm.toml');
  t.equal(c.cluster.name, 'demo');
  t.same(c.sites.map((s) => s.name), ['east', 'west']);
  t.same(c.networks, [{ name: 'geo1', mtu: 1500 }, { name: 'geo2', mtu: 1500 }]);
  const beta = findMachine(c, 'beta');
  t.equal(beta.promoteFailureTimeout, 0, 'default: never');
  t.equal(beta.runDir, '/run/georm');
  const g = findGmd(c, 'data10gmd');
  t.match(g, { minor: 10, mode: 'mwc', regionSize: 32768, syncRate: 65536, hwm: 131072, resyncRateLimit: 0 });
  t.equal(gmdMachine(g, 'alpha').nbdDevice, '/dev/nbd10');
  t.same(gmdMachine(g, 'beta').nbdListen, ['unix:/run/georm/data10gmd.nbd'], 'default NBD socket in run_dir');
  t.same(peersOf(c, g, 'alpha').map((p) => p.name), ['beta']);
  t.same(peersOf(c, 'data10gmd', 'beta').map((p) => p.site), ['east']);
  t.same(localPeersOf(c, g, 'alpha'), []);
  t.same(endpointsOf(c, 'alpha', 10), [
    { network: 'geo1', address: '127.0.0.1', port: 7410, mtu: 1500 },
    { network: 'geo2', address: '127.0.0.2', port: 7410, mtu: 1500 },
  ]);
  t.equal(localMachine(c, 'alpha').name, 'alpha');
  t.throws(() => findGmd(c, 'nope'), { code: 'CONFIG_ERR_UNKNOWN_GMD', exitCode: 1, message: /^GMD 'nope' is not defined in \/etc\/georm\/georm\.toml \(GMDs: data10gmd\)$/ });
  t.throws(() => findMachine(c, 'gamma'), { code: 'CONFIG_ERR_UNKNOWN_MACHINE', message: /machines: alpha, beta; use --machine/ });
  t.throws(() => gmdMachine(g, 'gamma'), { code: 'CONFIG_ERR_UNKNOWN_MACHINE', message: /has no definition for machine 'gamma'/ });
  t.throws(() => peersOf(c, g, 'gamma'), { code: 'CONFIG_ERR_UNKNOWN_MACHINE' });
  t.throws(() => localMachine(c, 'gamma'), { code: 'CONFIG_ERR_UNKNOWN_MACHINE' });
});

t.test('relative paths resolve against the file; loadConfig reads files', async (t) => {
  const { dir, cleanup } = tempDir('georm-cfg-');
  t.teardown(cleanup);
  const text = SAMPLE.replace('"/var/lib/georm/data10.img"', '"vols/a.img"').replace('key_file = "/etc/georm/cluster.key"', 'key_file = "cluster.key"');
  writeFileSync(join(dir, 'georm.toml'), text);
  const c = await loadConfig(join(dir, 'georm.toml'));
  t.equal(c.source, join(dir, 'georm.toml'));
  t.equal(c.cluster.keyFile, join(dir, 'cluster.key'));
  t.equal(c.gmds[0]!.machines[0]!.volume, join(dir, 'vols/a.img'));
  await t.rejects(loadConfig(join(dir, 'missing.toml')), { code: 'CONFIG_ERR_NOT_FOUND', message: /missing\.toml:1:1: cannot read/ });
});

t.test('renderConfig round-trips', async (t) => {
  const c = parseConfig(SAMPLE, '/x/georm.toml');
  const { source: _source, ...input } = c;
  void _source;
  const again = parseConfig(renderConfig(input), '/x/georm.toml');
  t.same(again, c);
  const minimal: Omit<ClusterConfig, 'source'> = {
    ...input,
    gmds: [{ ...input.gmds[0]!, regionSize: 4096, syncRate: 1024 * 1024, hwm: 1536, resyncRateLimit: 3 * 1024 ** 3 }],
  };
  const back = parseConfig(renderConfig(minimal), '/x/georm.toml');
  t.match(back.gmds[0], { regionSize: 4096, syncRate: 1048576, hwm: 1536, resyncRateLimit: 3 * 1024 ** 3 });
  // Defaults left out of the input come back as defaults.
  const bare = parseConfig(renderConfig({
    cluster: { name: 'c' }, sites: [{ name: 'a' }, { name: 'b' }], networks: [{ name: 'n' }],
    machines: [{ name: 'm1', site: 'a', interfaces: [{ network: 'n', address: '127.0.0.1', port: 7000 }] },
      { name: 'm2', site: 'b', interfaces: [{ network: 'n', address: '127.0.0.2', port: 7000 }] }],
    gmds: [{ name: 'g', minor: 0, mode: 'async', machines: [
      { machine: 'm1', volume: '/v', stateMap: '/s', role: 'primary' }, { machine: 'm2', volume: '/v', stateMap: '/s', role: 'secondary' }] }],
  }), '/y/c.toml');
  t.match(bare.gmds[0], { regionSize: 32768, syncRate: 65536, hwm: 131072 });
  t.equal(bare.cluster.keyFile, '/etc/georm/cluster.key');
});

t.test('errors point at the right line and column', async (t) => {
  const cases: Array<{ text: string; line: number; col?: number; re: RegExp; what: string }> = [
    { what: 'syntax', text: SAMPLE.replace('minor = 10', 'minor = = 10'), line: lineOf(SAMPLE, 'minor = 10'), re: /TOML syntax error/ },
    { what: 'bad enum', text: SAMPLE.replace('role = "secondary"', 'role = "secondry"'), line: lineOf(SAMPLE, 'role = "secondary"'), col: 3,
      re: /gmd\[0\]\(data10gmd\)\.machine\[1\]\(beta\)\.role: role must be one of primary, secondary, none/ },
    { what: 'bad size', text: SAMPLE.replace('hwm = "128K"', 'hwm = "lots"'), line: lineOf(SAMPLE, 'hwm ='), col: 1, re: /invalid hwm 'lots'/ },
    { what: 'region size not a power of two', text: SAMPLE.replace('region_size = "32K"', 'region_size = "48K"'), line: lineOf(SAMPLE, 'region_size'), re: /power of two/ },
    { what: 'minor range', text: SAMPLE.replace('minor = 10', 'minor = 4096'), line: lineOf(SAMPLE, 'minor = 10'), re: /minor must be 0–1023/ },
    { what: 'unknown key', text: SAMPLE.replace('mtu = 1500 ', 'mtux = 1500'), line: lineOf(SAMPLE, 'mtu = 1500'), re: /network\[0\]\(geo1\)\.mtux: unknown key 'mtux'/ },
    { what: 'missing key points at its table', text: SAMPLE.replace('minor = 10\n', ''), line: lineOf(SAMPLE, '[[gmd]]'), re: /missing required key 'minor'/ },
    { what: 'missing nested key', text: SAMPLE.replace('  volume = "/var/lib/georm/data10.img"\n  state_map = "/var/lib/georm/data10gmd.map"\n  role = "secondary"', '  volume = "/v"\n  role = "secondary"'),
      line: lineOf(SAMPLE, '[[gmd.machine]]', 'machine = "alpha"'), re: /machine\[1\]\(beta\)\.state_map: missing required key 'state_map'/ },
    { what: 'unknown site', text: SAMPLE.replace('site = "west"', 'site = "north"'), line: lineOf(SAMPLE, 'site = "west"'), re: /unknown site 'north' \(sites: east, west\)/ },
    { what: 'unknown network', text: SAMPLE.replace('network = "geo2"\n  address = "127.0.0.2"\n  port = 7500', 'network = "geo3"\n  address = "127.0.0.2"\n  port = 7500'),
      line: lineOf(SAMPLE, 'network = "geo2"', 'name = "beta"'), re: /unknown network 'geo3'/ },
    { what: 'unknown machine in gmd', text: SAMPLE.replace('machine = "beta"', 'machine = "gamma"'), line: lineOf(SAMPLE, 'machine = "beta"'), re: /unknown machine 'gamma' \(machines: alpha, beta\)/ },
    { what: 'duplicate port', text: SAMPLE.replace('port = 7500\n  [[machine.interface]]', 'port = 7400\n  [[machine.interface]]'),
      line: lineOf(SAMPLE, 'port = 7500'), re: /address 127\.0\.0\.1:7400 is already used by machine 'alpha'/ },
    { what: 'two primaries', text: SAMPLE.replace('role = "secondary"', 'role = "primary"'), line: lineOf(SAMPLE, 'machine = "alpha"', '[[gmd]]') - 1, re: /2 primaries/ },
    { what: 'bad address', text: SAMPLE.replace('address = "127.0.0.1"', 'address = "not an address"'), line: lineOf(SAMPLE, 'address = "127.0.0.1"'), re: /IPv4\/IPv6 address or a host name/ },
    { what: 'port range', text: SAMPLE.replace('port = 7400                  #', 'port = 70000 #'), line: lineOf(SAMPLE, 'port = 7400 '), re: /port must be 1–65535/ },
    { what: 'bad listen', text: SAMPLE.replace('"unix:/run/georm/data10gmd.nbd"', '"http://x"'), line: lineOf(SAMPLE, 'nbd_listen'), re: /nbd_listen entries look like/ },
    { what: 'bad nbd device', text: SAMPLE.replace('"/dev/nbd10"', '"/dev/sda"'), line: lineOf(SAMPLE, 'nbd_device'), re: /nbd_device must look like/ },
    { what: 'three sites', text: SAMPLE.replace('[[site]]\nname = "west"', '[[site]]\nname = "west"\n[[site]]\nname = "south"'), line: lineOf(SAMPLE, '[[site]]'), re: /exactly two \[\[site\]\]/ },
  ];
  for (const c of cases) {
    const e = errorOf(c.text);
    t.match(e.message, c.re, `${c.what}: message`);
    const first = e.issues.find((i) => c.re.test(`${i.path}: ${i.message}`)) ?? e.issues[0]!;
    t.equal(first.line, c.line, `${c.what}: line (${e.message.split('\n')[0]})`);
    if (c.col !== undefined) t.equal(first.col, c.col, `${c.what}: column`);
    t.match(e.message, new RegExp(`^georm\\.toml:${first.line}:${first.col}: `, 'm'), `${c.what}: file:line:col prefix`);
  }
});

t.test('cross-section rules', async (t) => {
  const gmd2 = `
[[gmd]]
name = "log11gmd"
minor = 10
mode = "async"
  [[gmd.machine]]
  machine = "alpha"
  volume = "/var/lib/georm/data10gmd.map"
  state_map = "/var/lib/georm/log11.map"
  role = "none"
  [[gmd.machine]]
  machine = "beta"
  volume = "/var/lib/georm/log11.img"
  state_map = "/var/lib/georm/log11.img"
  role = "secondary"
`;
  const e = errorOf(SAMPLE + gmd2);
  const text = e.message;
  const base = lineOf(SAMPLE, '') + SAMPLE.split('\n').length - 1;
  t.match(text, /minor: duplicate minor '10'/);
  t.match(text, /role: an async GMD needs role 'primary' or 'secondary'/);
  t.match(text, /async GMD 'log11gmd' needs exactly one primary/);
  t.match(text, /the state map must not be the volume itself/);
  t.match(text, /\/var\/lib\/georm\/data10gmd\.map on machine 'alpha' is already used as state_map of GMD 'data10gmd'/);
  t.ok(e.issues.every((i) => i.line > base - 2), 'all issues point into the second GMD');
  t.ok(e.issues.every((i, k) => k === 0 || i.line >= e.issues[k - 1]!.line), 'issues sorted by line');

  const oneSite = SAMPLE.replace('site = "west"', 'site = "east"');
  t.match(errorOf(oneSite).message, /has no machine at site 'west'/);
  const noShared = SAMPLE.replace(/name = "beta"\nsite = "west"\n  \[\[machine.interface\]\]\n  network = "geo1"/, 'name = "beta"\nsite = "west"\n  [[machine.interface]]\n  network = "geo2"');
  t.match(errorOf(noShared).message, /share no network|two interfaces on network 'geo2'/);
  t.match(errorOf(SAMPLE.replace('name = "geo2"', 'name = "geo1"')).message, /duplicate network 'geo1'/);
  t.match(errorOf(SAMPLE.replace('minor = 10', 'minor = 1023').replace(/port = 7500/g, 'port = 65000')).message, /port 65000 \+ minor 1023 exceeds 65535/);
  const asyncTwo = SAMPLE.replace('mode = "mwc"', 'mode = "async"').replace('role = "secondary"', 'role = "secondary"\n  [[gmd.machine]]\n  machine = "alpha"\n  volume = "/b"\n  state_map = "/c"\n  role = "secondary"');
  const ae = errorOf(asyncTwo).message;
  t.match(ae, /listed twice/);
  t.match(ae, /async allows one per site/);
});

t.test('documents that are not tables, or empty', async (t) => {
  t.match(errorOf('').message, /missing required key 'cluster'|missing \[cluster\]/);
  t.match(errorOf('cluster = 3').message, /georm\.toml:1:1: cluster: missing \[cluster\] table|cluster/);
  const multi = SAMPLE.replace('nbd_listen = ["unix:/run/georm/data10gmd.nbd"]', 'nbd_listen = [\n    "unix:/run/georm/data10gmd.nbd",\n    "tcp://127.0.0.1:10809",\n  ]\n  bogus = """\nname = "x"\n"""');
  const e = errorOf(multi);
  t.equal(e.issues.length, 1, 'multi-line values are not read as keys');
  t.equal(e.issues[0]!.line, lineOf(multi, 'bogus'));
});

t.test('fuzz: mutated files give a config or a ConfigError, never a crash', async (t) => {
  let seed = Date.now() & 0xffff;
  const startSeed = seed;
  const rand = () => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff);
  const alphabet = '[]{}="\'.,#\n 0123456789abcxyz-_\\';
  let ok = 0, refused = 0, other = 0;
  for (let i = 0; i < 400; i++) {
    const chars = [...SAMPLE];
    for (let k = 0, n = 1 + Math.floor(rand() * 6); k < n; k++) {
      const at = Math.floor(rand() * chars.length);
      const op = rand();
      if (op < 0.4) chars[at] = alphabet[Math.floor(rand() * alphabet.length)]!;
      else if (op < 0.7) chars.splice(at, 1 + Math.floor(rand() * 20));
      else chars.splice(at, 0, alphabet[Math.floor(rand() * alphabet.length)]!);
    }
    try {
      parseConfig(chars.join(''), 'fuzz.toml');
      ok++;
    } catch (e) {
      if (e instanceof ConfigError && e.issues.every((x) => x.line >= 1 && x.col >= 1)) refused++;
      else { other++; t.comment(`seed ${startSeed} #${i}: ${String(e)}`); }
    }
  }
  t.equal(other, 0, `seed ${startSeed}: ${ok} parsed, ${refused} refused with positions`);
});

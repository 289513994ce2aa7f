import t from 'tap';
import { chmodSync, truncateSync, writeFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from '../helpers/env.js';
import { parseConfig, renderConfig } from '../../src/config/index.js';
import { gatherFacts, compareFacts, formatVerify, configDigest } from '../../src/config/verify.js';
import { StateMap } from '../../src/statemap/index.js';

t.test('geo_verify checks over the facts of both machines', async (t) => {
  const { dir, cleanup } = tempDir('georm-verify-');
  t.teardown(cleanup);
  const size = 8 << 20;
  for (const m of ['alpha', 'beta']) {
    mkdirSync(join(dir, m));
    writeFileSync(join(dir, m, 'vol.img'), '');
    truncateSync(join(dir, m, 'vol.img'), size);
  }
  writeFileSync(join(dir, 'cluster.key'), 'k'.repeat(32), { mode: 0o600 });
  const text = renderConfig({
    cluster: { name: 'v', keyFile: 'cluster.key' }, sites: [{ name: 'east' }, { name: 'west' }], networks: [{ name: 'n1' }],
    machines: [
      { name: 'alpha', site: 'east', runDir: 'alpha', interfaces: [{ network: 'n1', address: '127.0.0.1', port: 7600 }] },
      { name: 'beta', site: 'west', runDir: 'beta', interfaces: [{ network: 'n1', address: '127.0.0.2', port: 7600 }] },
    ],
    gmds: [{ name: 'vgmd', minor: 4, mode: 'mwc', machines: [
      { machine: 'alpha', volume: 'alpha/vol.img', stateMap: 'alpha/vgmd.map', role: 'primary' },
      { machine: 'beta', volume: 'beta/vol.img', stateMap: 'beta/vgmd.map', role: 'secondary' }] }],
  });
  const cfgPath = join(dir, 'georm.toml');
  writeFileSync(cfgPath, text);
  const cfg = parseConfig(text, cfgPath);

  // No state maps yet: warnings only.
  let findings = compareFacts(cfg, [await gatherFacts(cfg, 'alpha'), await gatherFacts(cfg, 'beta')]);
  t.same(findings.map((f) => f.check), ['state-map', 'state-map']);
  t.match(formatVerify(findings), /No ERRORS:\. \(2 warnings\)\n$/);

  const id = { gmdName: 'vgmd', minor: 4, deviceSize: size, regionSize: 32768 };
  await (await StateMap.create(join(dir, 'alpha/vgmd.map'), id)).close();
  const b = await StateMap.create(join(dir, 'beta/vgmd.map'), id);
  await b.close();
  findings = compareFacts(cfg, [await gatherFacts(cfg, 'alpha'), await gatherFacts(cfg, 'beta')]);
  t.same(findings, [], 'all checks pass');
  t.equal(formatVerify(findings), 'No ERRORS:.\n');

  // A peer volume of another size, a map of the wrong device, an insecure key, a changed config, divergence.
  truncateSync(join(dir, 'beta/vol.img'), size * 2);
  chmodSync(join(dir, 'cluster.key'), 0o644);
  const a = await StateMap.open(join(dir, 'alpha/vgmd.map'));
  await a.markStale(0, 0);
  await a.close();
  const betaFacts = await gatherFacts(cfg, 'beta');
  betaFacts.configDigest = 'f'.repeat(64);
  findings = compareFacts(cfg, [await gatherFacts(cfg, 'alpha'), betaFacts]);
  const checks = findings.map((f) => `${f.level}:${f.check}:${f.machine ?? ''}`);
  t.ok(checks.includes('error:same-size:'), 'sizes differ');
  t.ok(checks.includes('error:state-map:beta'), 'beta map no longer matches its volume');
  t.ok(checks.includes('error:cluster-key:alpha'), 'insecure key');
  t.ok(checks.includes('error:config-identical:beta'), 'configuration differs');
  const report = formatVerify(findings);
  t.match(report, /ERROR: beta: vgmd: state map .* belongs to another device: device size 8388608 \(expected 16777216\)/);
  t.match(report, /\d+ ERRORS:\./);

  // One side unreachable; both sides dirty = divergence warning.
  truncateSync(join(dir, 'beta/vol.img'), size);
  chmodSync(join(dir, 'cluster.key'), 0o600);
  const b2 = await StateMap.open(join(dir, 'beta/vgmd.map'));
  await b2.markStale(3, 3);
  await b2.close();
  findings = compareFacts(cfg, [await gatherFacts(cfg, 'alpha'), await gatherFacts(cfg, 'beta')]);
  t.same(findings.map((f) => f.check), ['divergence']);
  findings = compareFacts(cfg, [await gatherFacts(cfg, 'alpha')]);
  t.same(findings.map((f) => `${f.check}:${f.machine}`), ['reachable:beta']);
  t.equal(configDigest(cfg), configDigest(parseConfig(text, join(dir, 'georm.toml'))), 'digest is stable');
});

t.test('missing volumes and key', async (t) => {
  const { dir, cleanup } = tempDir('georm-verify2-');
  t.teardown(cleanup);
  const text = renderConfig({
    cluster: { name: 'v', keyFile: 'nokey' }, sites: [{ name: 'e' }, { name: 'w' }], networks: [{ name: 'n1' }],
    machines: [
      { name: 'a', site: 'e', runDir: 'nodir', interfaces: [{ network: 'n1', address: '127.0.0.1', port: 7600 }] },
      { name: 'b', site: 'w', interfaces: [{ network: 'n1', address: '127.0.0.2', port: 7600 }] },
    ],
    gmds: [{ name: 'g', minor: 1, mode: 'sync', machines: [
      { machine: 'a', volume: 'missing.img', stateMap: 'a.map', role: 'primary' },
      { machine: 'b', volume: dir, stateMap: 'b.map', role: 'secondary' }] }],
  });
  const cfg = parseConfig(text, join(dir, 'c.toml'));
  const findings = compareFacts(cfg, [await gatherFacts(cfg, 'a'), await gatherFacts(cfg, 'b')]);
  const checks = findings.map((f) => `${f.level}:${f.check}:${f.machine ?? ''}`);
  t.ok(checks.includes('error:volume:a'), 'missing volume');
  t.ok(checks.includes('error:volume:b'), 'a directory is no volume');
  t.ok(checks.includes('error:cluster-key:a'));
  t.ok(checks.includes('warning:run-dir:a'));
});

import t from 'tap';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { GEORM_BIN, tempDir } from '../helpers/env.js';
import { runCmd } from '../helpers/proc.js';
import { SAMPLE, lineOf } from './sample.js';

t.test('georm config check', async (t) => {
  const { dir, cleanup } = tempDir('georm-cfgcli-');
  t.teardown(cleanup);
  const good = join(dir, 'good.toml');
  const bad = join(dir, 'bad.toml');
  writeFileSync(good, SAMPLE);
  writeFileSync(bad, SAMPLE.replace('mode = "mwc"', 'mode = "fast"'));

  const ok = await runCmd(process.execPath, [GEORM_BIN, 'config', 'check', good]);
  t.equal(ok.code, 0);
  t.match(ok.stdout, /ok — cluster 'demo': 2 sites, 2 machines, 2 networks, 1 GMDs \(data10gmd\/10\/mwc\)/);

  const okJson = await runCmd(process.execPath, [GEORM_BIN, 'config', 'check', '--json', good]);
  t.equal(okJson.code, 0);
  t.equal((JSON.parse(okJson.stdout) as { config: { gmds: Array<{ regionSize: number }> } }).config.gmds[0]!.regionSize, 32768);

  const line = lineOf(SAMPLE, 'mode = "mwc"');
  const no = await runCmd(process.execPath, [GEORM_BIN, 'config', 'check', bad]);
  t.equal(no.code, 1);
  t.equal(no.stderr.trim(), `${bad}:${line}:1: gmd[0](data10gmd).mode: mode must be one of sync, mwc, async`);

  const noJson = await runCmd(process.execPath, [GEORM_BIN, 'config', 'check', bad, '--json']);
  t.equal(noJson.code, 1);
  t.match(JSON.parse(noJson.stdout), { ok: false, code: 'CONFIG_ERR_INVALID', errors: [{ line, col: 1, path: 'gmd[0](data10gmd).mode' }] });

  const missing = await runCmd(process.execPath, [GEORM_BIN, 'config', 'check', join(dir, 'nope.toml')]);
  t.equal(missing.code, 1);
  t.match(missing.stderr, /nope\.toml:1:1: cannot read the configuration/);
});

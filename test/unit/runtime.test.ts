/**
 * The Node.js runtime the suite runs under. CI (.ci/run) runs the suite on each supported Node and
 * names the expected major in GEORM_EXPECT_NODE_MAJOR: this file fails if that run is really on
 * another Node (a PATH mistake would otherwise test the same runtime twice and report both green),
 * and checks that package.json's `engines` names every runtime CI tests.
 */
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT } from '../helpers/env.js';

const expected = process.env.GEORM_EXPECT_NODE_MAJOR;
const major = Number(process.versions.node.split('.')[0]);

t.test('the suite runs on the Node major CI asked for', { skip: expected ? false : 'GEORM_EXPECT_NODE_MAJOR is not set (only .ci/run sets it)' }, async (t) => {
  t.equal(major, Number(expected), `process.version ${process.version}, process.execPath ${process.execPath}`);
  // Child processes the tests start (the georm CLI, daemons) use process.execPath or `node` from PATH.
  t.equal(execFileSync('node', ['-p', 'process.versions.node.split(".")[0]'], { encoding: 'utf8' }).trim(), String(major), '`node` on PATH is the same runtime');
  // engines lists the tested majors as `^N` alternatives (`^20 || ^24`): a runtime CI tests must be in it.
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { engines?: { node?: string } };
  const range = pkg.engines?.node ?? '';
  const majors = [...range.matchAll(/\^(\d+)/g)].map((m) => Number(m[1]));
  t.ok(majors.includes(major), `package.json engines.node "${range}" names Node ${major}`);
});

/** Runs real NBD client tools for tests. */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { runCmd } from '../helpers/proc.js';

/** PATH with the system python first: nbdsh needs the distribution's python3 with the nbd module. */
export const SYSTEM_PATH = `/usr/bin:/bin:/usr/sbin:/sbin:${process.env.PATH ?? ''}`;

const PRELUDE = `
import nbd, os, json, errno, sys
results = []
def check(name, cond, detail=''):
    results.append({'name': name, 'ok': bool(cond), 'detail': str(detail)})
def expect_errno(name, fn, want):
    try:
        fn()
        check(name, False, 'no error')
    except nbd.Error as e:
        check(name, e.errno == errno.errorcode[want], 'errno=%s %s' % (e.errno, e.string))
`;

export interface PyCheck { name: string; ok: boolean; detail: string }

/** Runs a python script under nbdsh; the script calls check(); returns the checks (throws on a crash). */
export async function nbdsh(dir: string, name: string, body: string, env: Record<string, string>): Promise<PyCheck[]> {
  const file = join(dir, `${name}.py`);
  writeFileSync(file, `${PRELUDE}\n${body}\nprint('RESULTS=' + json.dumps(results))\n`);
  const r = await runCmd('nbdsh', ['-n', '-c', `exec(open(${JSON.stringify(file)}).read())`], {
    env: { ...process.env, ...env, PATH: SYSTEM_PATH }, timeoutMs: 40000,
  });
  const m = /RESULTS=(.*)/.exec(r.stdout);
  if (r.code !== 0 || !m) throw new Error(`nbdsh ${name} failed (${r.code}): ${r.stderr.slice(-3000)} ${r.stdout.slice(-1000)}`);
  return JSON.parse(m[1]!) as PyCheck[];
}

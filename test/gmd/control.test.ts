import t from 'tap';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { tempDir } from '../helpers/env.js';
import { callControl, serveControl } from '../../src/gmd/control.js';

t.test('control socket: answers, remote errors, no process, and a process that closes without answering', async (t) => {
  const tmp = tempDir('georm-control-');
  t.teardown(tmp.cleanup);
  const dir = tmp.dir;
  const path = join(dir, 'g.sock');
  const server = await serveControl(path, async (op, args) => {
    if (op === 'echo') return args;
    const e = Object.assign(new Error('not here'), { code: 'GMD_ERR_STATE', exitCode: 2 });
    throw e;
  });
  t.teardown(() => new Promise<void>((r) => server.close(() => r())));
  t.same(await callControl(path, 'echo', { a: 1 }), { a: 1 });
  await t.rejects(callControl(path, 'other'), { code: 'GMD_ERR_STATE', message: 'not here', exitCode: 2 });
  await t.rejects(callControl(join(dir, 'none.sock'), 'status'), { code: 'GMD_ERR_NOT_RUNNING', exitCode: 2 });

  // A GMD that dies mid-request: the connection closes with no reply. With the default 60 s
  // timeout this test would run into tap's own timeout if the close were not noticed.
  const dying = join(dir, 'dying.sock');
  const d = createServer((sock) => sock.once('data', () => sock.destroy()));
  await new Promise<void>((r) => d.listen(dying, () => r()));
  t.teardown(() => new Promise<void>((r) => d.close(() => r())));
  await t.rejects(callControl(dying, 'status'), { code: 'GMD_ERR_NO_ANSWER', message: /closed the connection without answering 'status'/ });
});

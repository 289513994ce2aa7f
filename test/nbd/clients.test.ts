/**
 * Interoperability with real clients: qemu-io writes checked by qemu-img compare, nbdcopy round
 * trips, fio with crc32c verification over ioengine=nbd (TCP and unix socket).
 */
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { writeFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { startHarness, sparseFile } from './harness.js';
import { missingTools } from '../helpers/env.js';
import { runCmd } from '../helpers/proc.js';
import { SYSTEM_PATH } from './clients.js';

const MiB = 1024 * 1024;
const env = { ...process.env, PATH: SYSTEM_PATH };

t.test('qemu-io writes, qemu-img compare', { skip: missingTools('qemu-io', 'qemu-img') }, async (t) => {
  const h = await startHarness({ exports: { disk: 32 * MiB }, tcp: true });
  t.teardown(() => h.close());
  const ref = join(h.dir, 'ref.img');
  sparseFile(ref, 32 * MiB);
  const ops = ['write -P 0x11 0 1M', 'write -P 0x22 3M 64k', 'write -P 0x33 5M 4k', 'write -z 6M 1M', 'write -P 0x44 31M 1M',
    'aio_write -P 0x55 8M 512', 'aio_flush', 'discard 20M 1M', 'flush'];
  const args = (target: string) => ['-f', 'raw', ...ops.flatMap((o) => ['-c', o]), target];
  const local = await runCmd('qemu-io', args(ref), { env, timeoutMs: 30000 });
  t.equal(local.code, 0, local.stderr);
  for (const uri of [h.uri('disk'), h.tcpUri!]) {
    const r = await runCmd('qemu-io', args(uri), { env, timeoutMs: 30000 });
    t.equal(r.code, 0, `qemu-io over ${uri}: ${r.stderr}`);
    const cmp = await runCmd('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', ref, uri], { env, timeoutMs: 30000 });
    t.equal(cmp.code, 0, `qemu-img compare ${uri}: ${cmp.stdout}${cmp.stderr}`);
    const check = await runCmd('qemu-io', ['-f', 'raw', '-c', 'read -P 0x22 3M 64k', '-c', 'read -P 0 6M 1M', uri], { env, timeoutMs: 30000 });
    t.equal(check.code, 0);
    t.notMatch(check.stdout, /Pattern verification failed/, 'patterns read back');
  }
  t.ok(readFileSync(h.files.disk!).equals(readFileSync(ref)), 'backing file equals the local reference');
  const info = await runCmd('qemu-img', ['info', '--output=json', h.uri('disk')], { env, timeoutMs: 30000 });
  t.equal((JSON.parse(info.stdout) as { 'virtual-size': number })['virtual-size'], 32 * MiB);
});

t.test('nbdcopy round trip', { skip: missingTools('nbdcopy') }, async (t) => {
  const h = await startHarness({ exports: { disk: 24 * MiB } });
  t.teardown(() => h.close());
  const src = join(h.dir, 'src.bin');
  const back = join(h.dir, 'back.bin');
  const data = Buffer.concat([randomBytes(8 * MiB), Buffer.alloc(8 * MiB), randomBytes(8 * MiB)]);
  writeFileSync(src, data);
  for (const extra of [[], ['--connections=4', '--requests=16'], ['--synchronous']]) {
    const up = await runCmd('nbdcopy', [...extra, src, h.uri('disk')], { env, timeoutMs: 40000 });
    t.equal(up.code, 0, `upload ${extra.join(' ')}: ${up.stderr}`);
    t.ok(readFileSync(h.files.disk!).equals(data), 'backing file holds the data');
    const down = await runCmd('nbdcopy', [...extra, h.uri('disk'), back], { env, timeoutMs: 40000 });
    t.equal(down.code, 0, `download: ${down.stderr}`);
    t.ok(readFileSync(back).equals(data), `round trip equal ${extra.join(' ')}`);
    writeFileSync(h.files.disk!, Buffer.alloc(24 * MiB));
  }
});

for (const userBufferReads of [true, false]) t.test(`fio verify=crc32c over ioengine=nbd (${userBufferReads ? 'reused read buffer' : "'data' events"})`, { skip: missingTools('fio') }, async (t) => {
  const h = await startHarness({ exports: { disk: 64 * MiB }, tcp: true, userBufferReads });
  t.teardown(() => h.close());
  const jobs: Array<[string, string[]]> = [
    [h.tcpUri!, ['--rw=randwrite', '--bs=4k', '--iodepth=32', '--size=16M']],
    [h.uri('disk'), ['--rw=write', '--bs=1M', '--iodepth=8', '--size=48M']],
    [h.uri('disk'), ['--rw=randrw', '--bsrange=512-128k', '--iodepth=16', '--size=32M', '--offset=32M']],
  ];
  for (const [uri, extra] of jobs) {
    const r = await runCmd('fio', ['--name=verify', '--verify_state_save=0', '--ioengine=nbd', `--uri=${uri}`, '--verify=crc32c', '--do_verify=1',
      '--verify_fatal=1', ...extra, '--output-format=json'], { env, timeoutMs: 50000 });
    t.equal(r.code, 0, `fio ${extra.join(' ')}: ${r.stderr.slice(-2000)}`);
    const j = JSON.parse(r.stdout.slice(r.stdout.indexOf('{'))) as { jobs: Array<{ error: number; write: { io_bytes: number } }> };
    t.equal(j.jobs[0]!.error, 0, 'no fio error');
    t.ok(j.jobs[0]!.write.io_bytes > 0, 'fio wrote data');
  }
  // The reused buffer relies on Node internals (_handle); a Node that changed them falls back silently
  // to 'data' events, so the mode each connection really used is checked, on every runtime CI runs.
  const modes = new Set(h.logs.filter((l) => l.msg === 'nbd transmission').map((l) => (l.obj as { reads?: string }).reads));
  t.same([...modes], [userBufferReads ? 'onread' : 'data'], `every connection read through ${userBufferReads ? 'the reused buffer' : "'data' events"} (${process.version})`);
});

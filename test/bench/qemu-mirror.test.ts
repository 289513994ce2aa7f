import t from 'tap';
import { openSync, readSync, closeSync, writeFileSync, truncateSync } from 'node:fs';
import { join } from 'node:path';
import { missingTools, tempDir } from '../helpers/env.js';
import { runCmd } from '../helpers/proc.js';
import { startQemuMirror } from '../../scripts/bench/qemu-mirror.js';

function readAt(path: string, offset: number, length: number): Buffer {
  const fd = openSync(path, 'r');
  try {
    const b = Buffer.alloc(length);
    readSync(fd, b, 0, length, offset);
    return b;
  } finally {
    closeSync(fd);
  }
}

for (const peerServer of ['nbdkit', 'qemu-nbd'] as const) {
  t.test(`qemu blockdev-mirror (write-blocking) to a ${peerServer} peer: acknowledged writes are on the peer`, {
    skip: missingTools('qemu-storage-daemon', peerServer, 'qemu-io'), timeout: 60000,
  }, async (t) => {
    const { dir, cleanup } = tempDir('georm-qmirror-');
    t.teardown(cleanup);
    const file = join(dir, 'local.img');
    const peerFile = join(dir, 'peer.img');
    writeFileSync(file, Buffer.alloc(0));
    writeFileSync(peerFile, Buffer.alloc(0));
    truncateSync(file, 16 << 20);
    truncateSync(peerFile, 16 << 20);
    // Data present before the mirror starts must reach the peer with the initial full copy.
    const pre = await runCmd('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 8M 64k', file]);
    t.equal(pre.code, 0, pre.stderr);

    const m = await startQemuMirror({ file, peerFile, peerServer, cache: 'writeback' });
    t.teardown(() => m.stop());
    t.match(m.uri, /^nbd\+unix:\/\/\/mirror\?socket=/);
    t.same(readAt(peerFile, 8 << 20, 65536), Buffer.alloc(65536, 0x5a), 'initial copy reached the peer');

    const w = await runCmd('qemu-io', ['-f', 'raw', '-c', 'write -P 0xab 4096 1M', m.uri]);
    t.equal(w.code, 0, w.stderr);
    // write-blocking: once the client has its reply, the data is on the peer, before any stop or flush.
    t.same(readAt(peerFile, 4096, 1 << 20), Buffer.alloc(1 << 20, 0xab), 'write reached the peer file when acknowledged');
    t.same(readAt(file, 4096, 1 << 20), Buffer.alloc(1 << 20, 0xab), 'and the local file');
    await m.stop();
    await m.stop(); // idempotent
    const after = await runCmd('qemu-io', ['-f', 'raw', '-c', 'read -P 0 0 4096', peerFile]);
    t.equal(after.code, 0, 'untouched areas stay zero on the peer');
  });
}

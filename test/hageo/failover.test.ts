/**
 * Failover of a GMD managed by ocf:georm:gmd in a real two-node Pacemaker + Corosync cluster (the
 * namespace lab, src/hageo/lab): the GMD comes up promoted on its preferred node (node1); a writer
 * of sequence-numbered records (one 4 KiB record per slot, FUA) writes through node1's NBD export;
 * node1 fails as a site does (every process SIGKILLed, its links cut); node2 is promoted and a
 * write through its export succeeds. Every record whose write was acknowledged is on node2's
 * volume (sync, mwc) or the records there form a prefix (async). The first write on node2 without
 * its peer records node1 outdated in the CIB (rule 10; the lab keeps quorum with two_node).
 * The time from the failure to the first write acknowledged on node2 is reported.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync, chmodSync, closeSync, openSync, ftruncateSync, readFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { Lab, labUnavailable } from '../../src/hageo/lab/index.js';
import { cloneId } from '../../src/hageo/cib.js';
import { nodesWithRole } from '../../src/hageo/crm-mon.js';
import { installAgents } from '../../src/cli/commands/ocf.js';
import { callControl } from '../../src/gmd/control.js';
import type { HaStatus } from '../../src/gmd/promotion.js';
import { missingTools, nbdshEnv } from '../helpers/env.js';
import { runCmd } from '../helpers/proc.js';

const skip = (await labUnavailable()) || missingTools('nbdsh');
const GMD = 'labgmd';
const SIZE = 32 << 20;
const SLOTS = SIZE / 4096;
const MAGIC = 0x47454f524d524543n;

/** The writer: record i (magic, i, repeated) at slot i with FUA; prints i once acknowledged. */
const WRITER = `
import struct, sys
i = 0
while i < ${SLOTS}:
    h.pwrite(struct.pack('<QQ', ${MAGIC}, i) * 256, i * 4096, nbd.CMD_FLAG_FUA)
    print(i, flush=True)
    i += 1
`;

function recordAt(vol: Buffer, i: number): bigint | null {
  const off = i * 4096;
  if (vol.readBigUInt64LE(off) !== MAGIC) return null;
  return vol.readBigUInt64LE(off + 8);
}

for (const mode of ['mwc', 'sync', 'async'] as const) {
  t.test(`${mode}: site failure of the promoted node`, { skip }, async (t) => {
    const dir = mkdtempSync('/var/tmp/georm-failover-');
    chmodSync(dir, 0o755);
    t.teardown(() => rmSync(dir, { recursive: true, force: true }));
    // The nodes see /usr/lib/ocf from a copy holding ocf:georm:gmd (nothing installed on the host).
    const root = join(dir, 'root');
    mkdirSync(join(root, 'usr/lib'), { recursive: true });
    const cp = await runCmd('cp', ['-a', '/usr/lib/ocf', join(root, 'usr/lib/ocf')]);
    t.equal(cp.code, 0, 'copied the OCF tree');
    await installAgents({ root });
    const labDir = join(dir, 'lab');
    for (const m of ['node1', 'node2']) {
      mkdirSync(join(labDir, 'nodes', m, 'data'), { recursive: true });
      const fd = openSync(join(labDir, 'nodes', m, 'data', `${GMD}.img`), 'w');
      ftruncateSync(fd, SIZE);
      closeSync(fd);
    }
    const lab = await Lab.up({
      nodes: 2, links: 2, token: 2000, dir: labDir, agent: 'ocf:georm:gmd',
      gmds: [{ name: GMD, minor: 10, mode }], binds: [{ source: join(root, 'usr/lib/ocf'), target: '/usr/lib/ocf' }],
    });
    t.teardown(() => lab.down());
    const clone = cloneId(GMD);
    const runDir = (m: string) => join(labDir, 'nodes', m, 'run', 'georm');
    const uri = (m: string) => `nbd+unix:///${GMD}?socket=${join(runDir(m), `${GMD}.nbd`)}`;
    const ha = (m: string) => callControl(join(runDir(m), `${GMD}.sock`), 'ha-status', {}, 10000) as Promise<HaStatus>;

    await lab.waitStatus('node1', (s) => nodesWithRole(s, clone, 'Promoted').join() === 'node1' && nodesWithRole(s, clone, 'Unpromoted').join() === 'node2',
      'the GMD promoted on node1 and unpromoted on node2', 120000);
    await lab.waitFor('node1 mirroring to node2', async () => {
      const s = await ha('node1').catch(() => null);
      return !!s && s.exposed && s.peer === 'node2' && !s.localDirty;
    }, { timeoutMs: 60000 });
    t.pass('GMD promoted on node1 (preferred), mirroring to node2');

    // The writer runs until node1 dies under it.
    const writer = spawn('nbdsh', ['-u', uri('node1'), '-c', WRITER], { env: nbdshEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
    t.teardown(() => { if (writer.exitCode === null) writer.kill('SIGKILL'); });
    let acked = -1;
    let out = '';
    writer.stdout.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      const lines = out.split('\n');
      out = lines.pop()!;
      for (const l of lines) if (l.trim()) acked = Number(l);
    });
    await lab.waitFor('the writer to get 200 records acknowledged', async () => acked >= 200, { timeoutMs: 120000 });
    await new Promise((r) => setTimeout(r, 500 + Math.random() * 1500));

    const t0 = Date.now();
    await lab.killNode('node1');
    await lab.isolate('node1');
    const ackedAtFailure = acked;
    await new Promise((r) => setTimeout(r, 300));
    writer.kill('SIGKILL');
    t.ok(ackedAtFailure >= 200, `writer had ${ackedAtFailure + 1} records acknowledged when node1 failed`);

    await lab.waitStatus('node2', (s) => nodesWithRole(s, clone, 'Promoted').join() === 'node2', 'node2 promoted', 120000);
    const tPromoted = Date.now();
    // The application's first write on node2 (retried until the export is there).
    let tWrite = 0;
    await lab.waitFor('a write acknowledged through node2\'s export', async () => {
      if (!existsSync(join(runDir('node2'), `${GMD}.nbd`))) return false;
      const r = await runCmd('nbdsh', ['-u', uri('node2'), '-c', `h.pwrite(b'\\x01' * 4096, ${(SLOTS - 1) * 4096}, nbd.CMD_FLAG_FUA)`], { env: nbdshEnv(), timeoutMs: 60000 });
      if (r.code !== 0) return false;
      tWrite = Date.now();
      return true;
    }, { timeoutMs: 120000 });
    t.comment(`${mode}: failure -> node2 promoted ${((tPromoted - t0) / 1000).toFixed(1)} s, -> first write acknowledged on node2 ${((tWrite - t0) / 1000).toFixed(1)} s`);

    const vol = readFileSync(join(labDir, 'nodes', 'node2', 'data', `${GMD}.img`));
    let present = 0;
    let firstMissing = -1;
    for (let i = 0; i <= ackedAtFailure + 64 && i < SLOTS - 1; i++) {
      const r = recordAt(vol, i);
      if (r === BigInt(i)) { present++; if (firstMissing >= 0 && i > ackedAtFailure) break; }
      else if (firstMissing < 0) firstMissing = i;
    }
    if (mode === 'async') {
      // A prefix: no record after the first missing one (up to what was acknowledged).
      const after = firstMissing < 0 ? 0 : Array.from({ length: Math.max(0, ackedAtFailure + 1 - firstMissing) }, (_, k) => recordAt(vol, firstMissing + k)).filter((r) => r !== null).length;
      t.equal(after, 0, `async: node2 holds a prefix of the records (first missing ${firstMissing}, lost ${firstMissing < 0 ? 0 : ackedAtFailure + 1 - firstMissing} acknowledged)`);
    } else {
      t.ok(firstMissing < 0 || firstMissing > ackedAtFailure, `${mode}: every acknowledged record (0..${ackedAtFailure}) is on node2 (first missing: ${firstMissing})`);
    }
    const rec = await lab.exec('node2', 'crm_attribute', ['-N', 'node1', '-n', `georm-outdated-${GMD}`, '-l', 'forever', '-G', '-q']);
    t.equal(rec.code, 0, `node1 is recorded outdated in the CIB: ${rec.stdout.trim()} ${rec.stderr.trim()}`);
    const st = await ha('node2');
    t.ok(st.fence.held >= 1 && st.fence.failed === 0, `node2 held its first write without node1 until the record was written (held ${st.fence.held}, failed ${st.fence.failed})`);
  });
}

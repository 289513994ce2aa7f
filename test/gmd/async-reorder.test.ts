import t from 'tap';
import { once } from 'node:events';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { TestCluster } from './cluster.js';
import { missingTools } from '../helpers/env.js';
import { newHistory, readLog, settledSeqs, checkPrefix, startWriter, waitForLog } from './seqlog.js';
import { loadConfig, findGmd, findMachine, endpointsOf } from '../../src/gmd/cluster-config.js';
import { startWanEmulator } from '../../src/geomessage/wanem.js';
import { stopProcess } from '../../src/util/process.js';

/**
 * DESIGN §4 rule 1, async: the secondary holds a prefix of the primary's write order. On loopback
 * nothing reorders, so a GMD that sent its mirrored writes unordered, or a GeoMessage that
 * dispatched ordered messages as they completed, passed the loopback crash test. Here the primary
 * reaches the secondary through the WAN emulator (src/geomessage/wanem.ts), which holds a fifth of
 * the packets back so that later ones overtake them. At the primary's kill -9 the emulator's
 * primary-to-secondary direction is cut first, dropping what it still holds: the secondary then
 * has later messages whose predecessors never arrive, and may apply none of them.
 */
const SIZE = 8 * 1024 * 1024;

t.test('async: through a link that reorders packets, the secondary at the primary\'s kill -9 holds exactly a prefix of the write order', {
  skip: missingTools('python3'),
}, async (t) => {
  const c = await TestCluster.create({ mode: 'async', size: SIZE, networks: 1, pft: 30 });
  t.teardown(() => c.cleanup());
  const cfg = await loadConfig(c.cfgPath);
  const minor = findGmd(cfg, c.gmd).minor;
  const [alphaEp] = endpointsOf(cfg, 'alpha', minor);
  const [betaEp] = endpointsOf(cfg, 'beta', minor);
  const em = await startWanEmulator({
    a: { listen: { address: '127.0.0.1', port: 0 }, target: { address: alphaEp!.address, port: alphaEp!.port } },
    b: { listen: { address: '127.0.0.1', port: 0 }, target: { address: betaEp!.address, port: betaEp!.port } },
    a2b: { delayMs: 1, reorder: 0.2, reorderDelayMs: 6 }, seed: 21,
  });
  t.teardown(() => em.close());
  // alpha's copy of the configuration sends to beta through the emulator; beta answers alpha
  // directly (GeoMessage knows a peer by its authenticated header, not by the packet's source).
  const text = await readFile(c.cfgPath, 'utf8');
  const betaPort = findMachine(cfg, 'beta').interfaces[0]!.port;
  const viaEmulator = text.replace(`  port = ${betaPort}\n`, `  port = ${em.ports().a - minor}\n`);
  t.not(viaEmulator, text, 'alpha reaches beta through the emulator');
  const alphaCfg = join(c.dir, 'alpha-via-wanem.toml');
  await writeFile(alphaCfg, viaEmulator);
  await Promise.all([c.run('alpha', ['--config', alphaCfg]), c.run('beta')]);
  await c.start('alpha', ['beta']);
  await c.start('beta');
  await c.waitInSync();

  const h = newHistory();
  const log = join(c.dir, 'writer.log');
  const writer = startWriter(c.uri, log, h, 1000000, 5);
  t.teardown(() => stopProcess(writer));
  // Enough writes for reordered messages to be in flight whenever the cut comes.
  await waitForLog(log, 'A', 1500);
  em.cut('a2b'); // what the emulator still holds back never reaches the secondary
  await c.kill9('alpha');
  if (writer.exitCode === null && writer.signalCode === null) await once(writer, 'exit');
  await readLog(log, h);
  const reordered = em.stats().a2b.reordered;
  t.ok(reordered > 0, `the emulator reordered packets toward the secondary (${reordered})`);
  t.ok(h.lastAcked.size > 0, `writes were acknowledged (${h.writes.length} issued)`);
  checkPrefix(t, await settledSeqs(c.vol.beta!), h);
});

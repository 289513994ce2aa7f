/**
 * Evidence for `georm metrics`: a real Prometheus server scrapes one `georm metrics` per machine while
 * a real GMD pair mirrors; the secondary is killed and brought back. Prometheus's HTTP API must show
 * the series, the stale bytes rising while the peer is down and back at 0 after the resync, and the
 * shipped alert rules (with 1 s `for:`) must fire on a staged divergence.
 */
import t from 'tap';
import { join } from 'node:path';
import { TestCluster } from '../gmd/cluster.js';
import { runCmd } from '../helpers/proc.js';
import { missingTools, tempDir, ROOT } from '../helpers/env.js';
import { Prometheus, startGeormMetrics, testAlertRules } from './prometheus.js';

const REGION = 32768;
const qio = (uri: string, ...cmds: string[]) => runCmd('qemu-io', ['-f', 'raw', ...cmds.flatMap((c) => ['-c', c]), uri], { timeoutMs: 60000 });
const val = (r: Array<{ value: [number, string] }>) => r.map((x) => Number(x.value[1]));
const skip = missingTools('prometheus', 'promtool', 'qemu-io');

t.test('promtool accepts the shipped alert rules', { skip: missingTools('promtool') }, async (t) => {
  const r = await runCmd('promtool', ['check', 'rules', join(ROOT, 'docs/prometheus-alerts.yml')]);
  t.equal(r.code, 0, `promtool check rules: ${r.stdout}${r.stderr}`);
  t.match(r.stdout, /SUCCESS: \d+ rules found/);
});

t.test('Prometheus scrapes georm metrics: secondary killed -> stale bytes rise; back -> resync -> 0', { skip }, async (t) => {
  const c = await TestCluster.create({ mode: 'mwc', size: 16 * 1024 * 1024, rateLimit: '1M', syncRate: '64K', pft: 2 });
  const { dir, cleanup } = tempDir('georm-prom-');
  const stops: Array<() => Promise<void>> = [];
  t.teardown(async () => { for (const s of stops.reverse()) await s().catch(() => undefined); await c.cleanup(); cleanup(); });
  await c.up();
  t.equal((await qio(c.uri, 'write -P 0x11 0 16M')).code, 0);
  await c.waitInSync();

  const runDir = (m: string) => join(c.dir, 'run', m);
  const ma = await startGeormMetrics(runDir('alpha'), 'alpha'); stops.push(ma.stop);
  const mb = await startGeormMetrics(runDir('beta'), 'beta'); stops.push(mb.stop);
  const prom = await Prometheus.start(dir, { alpha: ma.address, beta: mb.address }, await testAlertRules()); stops.push(() => prom.stop());

  const gmd = `gmd="${c.gmd}"`;
  await prom.waitFor(`georm_gmd_up{${gmd}}`, (r) => r.length === 2 && val(r).every((v) => v === 1), 'both GMDs up');
  const series = await prom.query(`{__name__=~"georm_.+", ${gmd}, machine="alpha"}`);
  const names = new Set(series.map((s) => s.metric.__name__));
  for (const n of ['georm_gmd_state', 'georm_gmd_regions', 'georm_gmd_stale_bytes', 'georm_gmd_local_write_bytes_total',
    'georm_gmd_remote_write_bytes_total', 'georm_geomessage_peer_up', 'georm_geomessage_link_srtt_seconds',
    'georm_geomessage_refused_packets_total', 'georm_geomessage_network_sent_bytes_total', 'georm_gmd_async_inflight_bytes']) {
    t.ok(names.has(n), `series ${n} present`);
  }
  const written = val(await prom.query(`georm_gmd_local_write_bytes_total{${gmd}, machine="alpha"}`))[0];
  t.ok(written !== undefined && written >= 16 * 1024 * 1024, `local write bytes counted (${written})`);
  t.same(val(await prom.query(`georm_gmd_stale_bytes{${gmd}, machine="alpha"}`)), [0], 'in sync: 0 stale bytes');
  t.same(val(await prom.query(`georm_gmd_state{${gmd}, machine="alpha", state="AVAILABLE"}`)), [1], 'alpha AVAILABLE');
  const srtt = val(await prom.query(`georm_geomessage_link_srtt_seconds{${gmd}, machine="alpha", peer="beta"}`));
  t.ok(srtt.length > 0 && srtt.every((s) => s > 0 && s < 1), `SRTT in seconds: ${srtt.join(', ')}`);
  const t0 = Date.now() / 1000;

  // The secondary dies; the primary keeps writing locally and marks the regions stale.
  await c.kill9('beta');
  await prom.waitFor(`georm_gmd_up{${gmd}, machine="beta"}`, (r) => val(r)[0] === 0, 'beta reported as georm_gmd_up 0', 30000);
  t.pass('the killed GMD is reported as georm_gmd_up 0');
  t.same(val(await prom.query('up{job="beta"}')), [1], 'the scrape of the dead GMD\'s machine still succeeds');
  const regions = Array.from({ length: 60 }, (_, i) => i * 8);
  t.equal((await qio(c.uri, ...regions.map((r) => `write -P 0x5a ${r * REGION} 4096`))).code, 0, 'writes complete with the secondary dead');
  await c.waitFor('alpha', (s) => s.map?.stale === regions.length, 'stale regions on alpha');
  await prom.waitFor(`georm_gmd_stale_bytes{${gmd}, machine="alpha"}`, (r) => val(r)[0] === regions.length * REGION, `stale bytes = ${regions.length * REGION}`, 30000);
  t.pass(`Prometheus shows georm_gmd_stale_bytes = ${regions.length * REGION} while the peer is down`);
  await prom.waitFor(`ALERTS{alertname="GeormPeerDown", ${gmd}, machine="alpha", peer="beta", alertstate="firing"}`, (r) => r.length === 1, 'GeormPeerDown firing', 30000);
  t.pass('GeormPeerDown fired');

  // Back: the secondary is run and started; the stale regions resync (rate limited to 1 MB/s).
  await c.run('beta');
  await c.start('beta');
  await c.waitInSync();
  await prom.waitFor(`georm_gmd_stale_bytes{${gmd}, machine="alpha"}`, (r) => val(r)[0] === 0, 'stale bytes back to 0', 30000);
  const sent = await prom.waitFor(`georm_gmd_resync_sent_bytes_total{${gmd}, machine="alpha"}`, (r) => val(r)[0] === regions.length * REGION, 'resync bytes counted', 30000);
  t.same(val(sent), [regions.length * REGION], 'georm_gmd_resync_sent_bytes_total = exactly the stale regions');
  const t1 = Date.now() / 1000;
  const range = await prom.queryRange(`georm_gmd_stale_bytes{${gmd}, machine="alpha"}`, Math.floor(t0), Math.ceil(t1));
  const samples = range[0]?.values.map(([, v]) => Number(v)) ?? [];
  const peak = samples.indexOf(Math.max(...samples));
  t.equal(samples[0], 0, 'range starts at 0 stale bytes');
  t.equal(samples[peak], regions.length * REGION, 'rises to the stale amount');
  t.equal(samples[samples.length - 1], 0, 'and returns to 0 after the resync');
  const resyncSeen = await prom.query(`max_over_time(georm_gmd_resync_left_bytes{${gmd}, machine="alpha"}[5m])`);
  t.comment(`resync progress series seen by Prometheus: ${JSON.stringify(val(resyncSeen))} (max bytes left)`);
  const div = await prom.query(`max_over_time(georm_gmd_divergence{${gmd}}[5m])`);
  t.ok(div.length > 0 && val(div).every((v) => v === 0), `a peer outage is not a divergence (${JSON.stringify(val(div))})`);
  t.notOk((await prom.alerts()).some((a) => a.labels.alertname === 'GeormDivergence'), 'no divergence alert');
});

t.test('the divergence alert fires on a staged divergence', { skip }, async (t) => {
  const c = await TestCluster.create({ mode: 'mwc', size: 4 * 1024 * 1024, roles: ['none', 'none'] });
  const { dir, cleanup } = tempDir('georm-prom-');
  const stops: Array<() => Promise<void>> = [];
  t.teardown(async () => { for (const s of stops.reverse()) await s().catch(() => undefined); await c.cleanup(); cleanup(); });
  await c.up();
  t.equal((await qio(c.uri, 'write -P 0x11 0 4M')).code, 0);
  await c.waitInSync();
  await c.terminate('alpha');
  await c.terminate('beta');
  // Each side runs alone (gmddown of the other) and is written independently (as test/gmd/divergence).
  await c.run('alpha');
  await c.start('alpha', ['beta']);
  t.equal((await qio(c.uri, 'write -P 0xaa 320K 32K')).code, 0, 'alpha writes region 10 alone');
  await c.terminate('alpha');
  await c.run('beta');
  await c.start('beta', ['alpha']);
  t.equal((await qio(`nbd+unix:///${c.gmd}?socket=${c.nbdSock.beta}`, 'write -P 0xbb 640K 32K')).code, 0, 'beta writes region 20 alone');
  await c.terminate('beta');
  await c.run('alpha');
  await c.run('beta');

  const ma = await startGeormMetrics(join(c.dir, 'run', 'alpha'), 'alpha'); stops.push(ma.stop);
  const mb = await startGeormMetrics(join(c.dir, 'run', 'beta'), 'beta'); stops.push(mb.stop);
  const prom = await Prometheus.start(dir, { alpha: ma.address, beta: mb.address }, await testAlertRules()); stops.push(() => prom.stop());
  const r = await prom.waitFor(`ALERTS{alertname="GeormDivergence", alertstate="firing", gmd="${c.gmd}"}`, (r) => r.length === 2, 'GeormDivergence firing on both machines', 60000);
  t.same(r.map((x) => `${x.metric.machine}->${x.metric.peer}`).sort(), ['alpha->beta', 'beta->alpha'], 'the alert names both sides');
  t.same(val(await prom.query(`georm_gmd_stale_bytes{gmd="${c.gmd}"}`)).sort(), [REGION, REGION], 'one stale region on each side');
});

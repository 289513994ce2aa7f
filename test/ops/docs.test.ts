/**
 * The shipped alert rules and Grafana dashboard only name series `georm metrics` really serves
 * (a renamed metric would otherwise leave a silent alert or an empty panel).
 */
import t from 'tap';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT } from '../helpers/env.js';
import { GeormMetrics } from '../../src/ops/metrics.js';

const served = new Set(new GeormMetrics().registry.getMetricsAsArray().map((m) => m.name));
const named = (text: string) => new Set([...text.matchAll(/\bgeorm_[a-z0-9_]+/g)].map((m) => m[0]));

t.test('metric names follow the conventions', async (t) => {
  for (const n of served) {
    t.match(n, /^georm_[a-z0-9_]+$/, `${n}: georm_ prefix, snake case`);
    t.notMatch(n, /_(ms|milliseconds|kb|kib|mb|bps)(_|$)/, `${n}: base units only`);
  }
  const counters = new GeormMetrics().registry.getMetricsAsArray().filter((m) => (m as unknown as { type: string }).type === 'counter');
  t.ok(counters.length > 10);
  for (const c of counters) t.match(c.name, /_total$/, `${c.name}: counter ends in _total`);
});

for (const file of ['docs/prometheus-alerts.yml', 'docs/grafana-dashboard.json']) {
  t.test(`${file} names only served series`, async (t) => {
    const text = readFileSync(join(ROOT, file), 'utf8');
    if (file.endsWith('.json')) JSON.parse(text);
    const names = named(text);
    t.ok(names.size >= 5, `${names.size} series named`);
    for (const n of names) t.ok(served.has(n), `${n} is served`);
  });
}

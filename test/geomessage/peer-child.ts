/**
 * A GeoMessage machine run as a separate process (inside a network namespace in netns tests).
 * argv[2]: JSON GeoMessageOptions without the key. Service 1 checks and counts messages; service 2
 * answers with the counts. Prints one JSON line when ready, and events as JSON lines.
 */
import { openGeoMessage, type GeoMessageOptions } from '../../src/geomessage/index.js';
import { KEY, payloadFor } from './fixtures.js';

const opts = JSON.parse(process.argv[2]!) as Omit<GeoMessageOptions, 'key'>;
const gm = await openGeoMessage({ ...opts, key: KEY });
const counts = new Map<number, number>();
let corrupt = 0;
gm.handle(1, (m) => {
  const i = m.payload.readUInt32BE(0);
  counts.set(i, (counts.get(i) ?? 0) + 1);
  if (!m.payload.equals(payloadFor(i, m.payload.length))) corrupt++;
});
gm.handle(2, () => Buffer.from(JSON.stringify({ distinct: counts.size, total: [...counts.values()].reduce((a, b) => a + b, 0), corrupt })));
for (const ev of ['peer-up', 'peer-down', 'peer-restart', 'network-down', 'network-up']) {
  gm.on(ev, (e: object) => process.stdout.write(JSON.stringify({ event: ev, ...e }) + '\n'));
}
process.stdout.write(JSON.stringify({ event: 'ready', epoch: gm.epoch }) + '\n');
process.on('SIGTERM', () => { void gm.close().then(() => process.exit(0)); });

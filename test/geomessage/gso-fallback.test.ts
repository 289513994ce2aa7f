import t from 'tap';
import { openGeoMessage, type GeoMessage } from '../../src/geomessage/index.js';
import { batchSocketsAvailable } from '../../src/native/udp.js';
import { missingTools, needsRoot } from '../helpers/env.js';
import { KEY, payloadFor, waitFor } from './fixtures.js';
import { ip, namespacePeer } from './netns-peer.js';

/**
 * The native wire sends runs of equal packets as one UDP GSO message. A route the kernel will not
 * segment for makes that sendmsg fail; udp.c then turns GSO off for the socket and sends the same
 * batch packet by packet. On Linux 6.18 (since "udp: Allow GSO transmit from devices with no checksum
 * offload") a device without TX checksum offload no longer refuses GSO, and IPsec (EIO) needs ESP,
 * which this kernel lacks; what does refuse it is a path MTU below the segment size: GeoMessage built
 * its packets for MTU 1500, the route now has 1400, and every GSO message fails with EMSGSIZE while a
 * plain datagram of the same size still leaves, fragmented by IP.
 *
 * The refusal turns GSO off only for a while (1 s, doubling per refusal in a row, at most 60 s): when
 * the MTU is raised again the next try passes and `io` shows '+gso' again. GEORM_GEOMSG_GSO=never
 * (GSO off for good after a refusal, as before) makes the second half of the test fail.
 */
const skip = needsRoot() || missingTools('ip') || (!batchSocketsAvailable() && 'native addon without batch sockets');

t.test('a route that refuses GSO mid-stream: the socket segments in userspace, nothing is lost or counted as failed; GSO returns with the MTU', { skip, timeout: 90000 }, async (t) => {
  const { ns, nets, aEndpoints, aPeers } = await namespacePeer(t, 'g', 1, 1, {}, { prefix: 'gsf', octet2: 203 });
  const net = nets[0]!;
  const a: GeoMessage = await openGeoMessage({ machine: 'a', key: KEY, keepaliveMs: 200, io: 'native', endpoints: aEndpoints, peers: aPeers });
  t.teardown(() => a.close());
  await waitFor(() => a.peerState('b') === 'up', 5000, 'peer up');
  const size = (i: number) => 16_000 + ((i * 7919) % 48_001); // 16–64 KB: 11–45 fragments of ~1.4 KB
  const sendAll = (from: number, n: number) => Promise.all(Array.from({ length: n }, (_, k) => {
    const i = from + k;
    return a.send('b', 1, payloadFor(i, size(i)), { ordered: i % 3 === 0, timeoutMs: 30_000 });
  }));

  // Over the plain veth GSO works: the first messages leave as GSO runs.
  const WARM = 20, N = 200;
  await sendAll(0, WARM);
  const before = a.stats().networks[0]!;
  t.match(before.io, /^native\+gso/, `GSO in use before the route changes (${before.io})`);
  t.comment(`before: packets out ${before.packetsOut}, resends ${before.resends}, timeouts ${before.timeouts}`);

  // Now the path MTU drops below GeoMessage's packet size (both ends, as behind a tunnel).
  await ip('link', 'set', 'dev', net.host, 'mtu', '1400');
  await ip('-n', ns, 'link', 'set', 'dev', net.peer, 'mtu', '1400');
  // Bounded: were the refused batches lost, their retransmissions (runs again) would be refused too.
  await sendAll(WARM, N).finally(() => {
    const n = a.stats().networks[0]!;
    t.comment(`after the MTU change: io ${n.io}, packets out ${n.packetsOut}, resends ${n.resends}, timeouts ${n.timeouts}, failures ${n.failures}`);
  });

  // Keep sending until a try of GSO (1 s after the first refusal) has been refused too.
  let sent = WARM + N;
  const sendSlowly = async (until: () => boolean, boundMs: number): Promise<number> => {
    const t0 = Date.now();
    while (!until() && Date.now() - t0 < boundMs) {
      await sendAll(sent, 5);
      sent += 5;
      await new Promise((r) => setTimeout(r, 200));
    }
    return Date.now() - t0;
  };
  const lowMs = await sendSlowly(() => a.stats().networks[0]!.gsoRefusals >= 2, 15_000);
  t.comment(`MTU 1400 for ${lowMs} ms more: ${sent - WARM - N} messages, gsoRefusals ${a.stats().networks[0]!.gsoRefusals}`);

  const counts = JSON.parse((await a.request('b', 2, Buffer.alloc(0))).toString()) as { distinct: number; total: number; corrupt: number };
  t.same(counts, { distinct: sent, total: sent, corrupt: 0 }, 'every message delivered exactly once and intact');
  const s = a.stats();
  const n = s.networks[0]!;
  t.comment(`io ${before.io} -> ${n.io}; packets out ${n.packetsOut}, resends ${n.resends}, timeouts ${n.timeouts}, failures ${n.failures}, sendWaits ${n.sendWaits}`);
  t.notMatch(n.io, /\+gso/, `GSO now off for the socket (${n.io})`);
  t.match(n.io, /^native/, 'still the native wire');
  t.equal(n.failures, 0, 'no packet counted as a send failure: the refused batch was sent again at once');
  t.equal(s.machines[0]!.failures, 0, 'no message failed');
  t.ok(n.gsoRefusals >= 2, `refusals counted, the first and a refused try (${n.gsoRefusals})`);
  t.equal(n.gsoReenabled, 0, 'GSO not back while the MTU stays low');

  // The MTU comes back: GSO must return within the current wait (a few seconds here: it doubled per
  // refusal above; 20 s is the bound), while messages keep flowing.
  await ip('link', 'set', 'dev', net.host, 'mtu', '1500');
  await ip('-n', ns, 'link', 'set', 'dev', net.peer, 'mtu', '1500');
  const before2 = sent;
  const upMs = await sendSlowly(() => /\+gso/.test(a.stats().networks[0]!.io), 20_000);
  const back = a.stats().networks[0]!;
  t.comment(`after raising the MTU: io ${back.io} after ${upMs} ms and ${sent - before2} messages; gsoRefusals ${back.gsoRefusals}, gsoReenabled ${back.gsoReenabled}`);
  t.match(back.io, /^native\+gso/, 'GSO back on once the route takes it again');
  t.equal(back.gsoReenabled, 1, 'counted once');

  const M = 100;
  await sendAll(sent, M);
  sent += M;
  const after = JSON.parse((await a.request('b', 2, Buffer.alloc(0))).toString()) as typeof counts;
  t.same(after, { distinct: sent, total: sent, corrupt: 0 }, 'every message, before and after GSO returned, delivered exactly once and intact');
  const s2 = a.stats();
  const n2 = s2.networks[0]!;
  t.comment(`end: io ${n2.io}; packets out ${n2.packetsOut}, resends ${n2.resends}, failures ${n2.failures}, gsoRefusals ${n2.gsoRefusals}, gsoReenabled ${n2.gsoReenabled}`);
  t.match(n2.io, /^native\+gso/, 'GSO still on');
  t.equal(n2.gsoRefusals, back.gsoRefusals, 'no refusal since GSO returned');
  t.equal(n2.failures, 0, 'no packet counted as a send failure');
  t.equal(s2.machines[0]!.failures, 0, 'no message failed');
});

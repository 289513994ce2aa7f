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
 */
const skip = needsRoot() || missingTools('ip') || (!batchSocketsAvailable() && 'native addon without batch sockets');

t.test('a route that refuses GSO mid-stream: the socket segments in userspace, nothing is lost or counted as failed', { skip, timeout: 90000 }, async (t) => {
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

  const counts = JSON.parse((await a.request('b', 2, Buffer.alloc(0))).toString()) as { distinct: number; total: number; corrupt: number };
  t.same(counts, { distinct: WARM + N, total: WARM + N, corrupt: 0 }, 'every message delivered exactly once and intact');
  const s = a.stats();
  const n = s.networks[0]!;
  t.comment(`io ${before.io} -> ${n.io}; packets out ${n.packetsOut}, resends ${n.resends}, timeouts ${n.timeouts}, failures ${n.failures}, sendWaits ${n.sendWaits}`);
  t.notMatch(n.io, /\+gso/, `GSO now off for the socket (${n.io})`);
  t.match(n.io, /^native/, 'still the native wire');
  t.equal(n.failures, 0, 'no packet counted as a send failure: the refused batch was sent again at once');
  t.equal(s.machines[0]!.failures, 0, 'no message failed');
});

import { type Test } from 'tap';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Procs, netnsCommand, runCmd, watchOutput } from '../helpers/proc.js';

/**
 * Machine b in a network namespace joined to the host (machine a) by veth pairs, for the GeoMessage
 * netns tests. Each pair is one network: <octet2>.<n>.1 on the host, .2 inside. Names carry the pid
 * so parallel runs do not collide; everything is deleted in teardown, also when setup fails halfway.
 */
const CHILD = join(fileURLToPath(new URL('.', import.meta.url)), 'peer-child.js');

export async function ip(...args: string[]): Promise<void> {
  const r = await runCmd('ip', args, { timeoutMs: 10000 });
  if (r.code !== 0) throw new Error(`ip ${args.join(' ')}: ${r.stderr}`);
}

export interface NsNet { name: string; host: string; peer: string; net: string }

/** Where a test file's namespaces live: link/namespace name prefix and the 10.<octet2>.0.0/16 it uses. */
export interface NsLayout { prefix: string; octet2: number }
/** netns.test.ts (test/gmd/cluster.ts uses 10.202). */
export const NETNS_TEST: NsLayout = { prefix: 'gmg', octet2: 201 };

/**
 * A namespace `<prefix>-<label>-<pid>` joined to the host by `count` veth pairs and machine b running
 * there (peer-child.ts) with `bExtra` options. Subnet n = 2·(subnetBase + pid % 60) + k: one file's
 * tests pick bases 60 apart, and n must stay ≤ 255 (checked), so a /16 holds two such bases.
 */
export async function namespacePeer(t: Test, label: string, count: number, subnetBase: number, bExtra: object = {}, layout: NsLayout = NETNS_TEST) {
  const tag = String(process.pid % 100000);
  const ns = `${layout.prefix}-${label}-${tag}`;
  const sub = subnetBase + (process.pid % 60);
  if (2 * sub + count - 1 > 255) throw new Error(`subnetBase ${subnetBase} with ${count} networks overflows 10.${layout.octet2}.x (pid ${process.pid})`);
  const nets: NsNet[] = Array.from({ length: count }, (_, k) => ({
    name: `geo${k + 1}`, host: `${layout.prefix}${label}${k + 1}h${tag}`, peer: `${layout.prefix}${label}${k + 1}p${tag}`,
    net: `10.${layout.octet2}.${2 * sub + k}`,
  }));
  const procs = new Procs();
  t.teardown(async () => {
    await procs.stopAll();
    await runCmd('ip', ['netns', 'del', ns]);
    for (const n of nets) await runCmd('ip', ['link', 'del', n.host]);
  });
  await ip('netns', 'add', ns);
  await ip('-n', ns, 'link', 'set', 'lo', 'up');
  for (const n of nets) {
    await ip('link', 'add', n.host, 'type', 'veth', 'peer', 'name', n.peer);
    await ip('link', 'set', n.peer, 'netns', ns);
    await ip('addr', 'add', `${n.net}.1/24`, 'dev', n.host);
    await ip('-n', ns, 'addr', 'add', `${n.net}.2/24`, 'dev', n.peer);
    await ip('link', 'set', n.host, 'up');
    await ip('-n', ns, 'link', 'set', n.peer, 'up');
  }
  const port = 7600;
  const bOpts = {
    machine: 'b', keepaliveMs: 200, endpoints: nets.map((n) => ({ network: n.name, address: `${n.net}.2`, port })),
    peers: [{ machine: 'a', endpoints: nets.map((n) => ({ network: n.name, address: `${n.net}.1`, port })), promoteFailureTimeoutMs: 0 }],
    ...bExtra,
  };
  const child = procs.spawn(...netnsCommand(ns, process.execPath, [CHILD, JSON.stringify(bOpts)]));
  await watchOutput(child).wait(/"ready"/);
  const aEndpoints = nets.map((n) => ({ network: n.name, address: `${n.net}.1`, port }));
  const aPeers = [{ machine: 'b', endpoints: nets.map((n) => ({ network: n.name, address: `${n.net}.2`, port })), promoteFailureTimeoutMs: 0 }];
  return { ns, nets, aEndpoints, aPeers };
}

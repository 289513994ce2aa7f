/**
 * The lab's wide-area network: a namespace `<prefix>-wan` holding one bridge per link (br0, br1,
 * …) and, per node and link, the bridge side of a veth pair (`n<K>l<L>`) whose other end sits in
 * the node's namespace as `l<L>` with the node's address on that link. Cutting a link = setting the
 * bridge-side veth down: the node keeps its address and sees NO-CARRIER, as with a pulled cable.
 * All interface names live in the lab's own namespaces, never the host's.
 */
import { must, run } from './exec.js';

export const bridgeName = (link: number) => `br${link}`;
/** Bridge-side veth of node index k (1-based) on link l (0-based = knet linknumber). */
export const wanVeth = (k: number, link: number) => `n${k}l${link}`;
export const nodeVeth = (link: number) => `l${link}`;

export async function createWan(wanNs: string, links: number): Promise<void> {
  await must('ip', ['netns', 'add', wanNs]);
  await must('ip', ['-n', wanNs, 'link', 'set', 'lo', 'up']);
  for (let l = 0; l < links; l++) {
    await must('ip', ['-n', wanNs, 'link', 'add', bridgeName(l), 'type', 'bridge']);
    await must('ip', ['-n', wanNs, 'link', 'set', bridgeName(l), 'up']);
  }
}

/** Connects node index k (namespace nodeNs) to every link, with `addresses[l]` on link l. */
export async function connectNode(wanNs: string, nodeNs: string, k: number, addresses: readonly string[]): Promise<void> {
  await must('ip', ['-n', nodeNs, 'link', 'set', 'lo', 'up']);
  for (let l = 0; l < addresses.length; l++) {
    await must('ip', ['-n', wanNs, 'link', 'add', wanVeth(k, l), 'type', 'veth', 'peer', 'name', nodeVeth(l), 'netns', nodeNs]);
    await must('ip', ['-n', wanNs, 'link', 'set', wanVeth(k, l), 'master', bridgeName(l), 'up']);
    await must('ip', ['-n', nodeNs, 'addr', 'add', `${addresses[l]}/24`, 'dev', nodeVeth(l)]);
    await must('ip', ['-n', nodeNs, 'link', 'set', nodeVeth(l), 'up']);
  }
}

export async function setLink(wanNs: string, k: number, link: number, up: boolean): Promise<void> {
  await must('ip', ['-n', wanNs, 'link', 'set', wanVeth(k, link), up ? 'up' : 'down']);
}

/** Whether the bridge side of node k's link is administratively up. */
export async function linkIsUp(wanNs: string, k: number, link: number): Promise<boolean> {
  const r = await run('ip', ['-n', wanNs, '-o', 'link', 'show', wanVeth(k, link)]);
  return r.code === 0 && /<[^>]*\bUP\b[^>]*>/.test(r.stdout);
}

/**
 * Reads `corosync-cfgtool -s` (corosync 3, knet): per link, the local address and each node's
 * state as this node sees it (localhost, connected, disconnected, …). Used by the lab and by
 * `georm hageo status` to show every path.
 */
export interface KnetLinkStatus {
  link: number;
  addr: string;
  /** nodeid → state word as printed ("localhost", "connected", "disconnected"). */
  peers: Map<number, string>;
}

export function parseCfgtoolStatus(text: string): { localNodeId: number | undefined; links: KnetLinkStatus[] } {
  const local = /Local node ID (\d+)/.exec(text);
  const links: KnetLinkStatus[] = [];
  let cur: KnetLinkStatus | undefined;
  for (const line of text.split('\n')) {
    const head = /^LINK ID (\d+)/.exec(line);
    if (head) { cur = { link: Number(head[1]), addr: '', peers: new Map() }; links.push(cur); continue; }
    if (!cur) continue;
    const addr = /^\s*addr\s*=\s*(\S+)/.exec(line);
    if (addr) { cur.addr = addr[1]!; continue; }
    const peer = /^\s*nodeid:?\s*(\d+):?\s+(\S.*?)\s*$/.exec(line);
    if (peer) cur.peers.set(Number(peer[1]), peer[2]!);
  }
  return { localNodeId: local ? Number(local[1]) : undefined, links };
}

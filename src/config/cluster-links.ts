/**
 * Which Corosync knet links a cluster file gives: one per geographic network that every machine has
 * an interface on (in the file's network order, so the first is the preferred one), then the
 * heartbeat-only link of `[hageo]` if any. Also the problems that would stop Corosync from using
 * them, as indices into the file so the validator can point at the line. Pure; no schema library,
 * so both the validator (raw file) and the renderer (normalised config) use it.
 */

export interface LinkInput {
  networks: string[];
  machines: Array<{ name: string; interfaces: Array<{ network: string; address: string }> }>;
  heartbeat: Array<{ machine: string; address: string }>;
}

/** One knet link: its number (ring N), where it comes from, and each machine's address on it. */
export interface CorosyncLink {
  linknumber: number;
  /** The geographic network's name, or 'heartbeat'. */
  source: string;
  kind: 'geographic' | 'heartbeat';
  /** Machine name → address, for every machine. */
  addresses: Map<string, string>;
}

export type LinkProblem =
  | { kind: 'no-common-network'; message: string }
  | { kind: 'too-many-links'; message: string }
  | { kind: 'shared-address'; machine: number; interface: number; message: string }
  | { kind: 'heartbeat-missing'; message: string }
  | { kind: 'heartbeat-duplicate'; heartbeat: number; message: string }
  | { kind: 'heartbeat-unknown-machine'; heartbeat: number; message: string }
  | { kind: 'heartbeat-shared-address'; heartbeat: number; message: string };

/** knet's limit (KNET_MAX_LINK). */
export const MAX_KNET_LINKS = 8;

export function corosyncLinks(c: LinkInput): { links: CorosyncLink[]; skipped: string[]; problems: LinkProblem[] } {
  const problems: LinkProblem[] = [];
  const links: CorosyncLink[] = [];
  const skipped: string[] = [];

  for (const net of c.networks) {
    const everyMachine = c.machines.every((m) => m.interfaces.some((i) => i.network === net));
    if (!everyMachine) { skipped.push(net); continue; }
    const addresses = new Map<string, string>();
    const owner = new Map<string, string>();
    c.machines.forEach((m, mi) => {
      const ii = m.interfaces.findIndex((i) => i.network === net);
      const addr = m.interfaces[ii]!.address;
      const other = owner.get(addr);
      if (other !== undefined) {
        problems.push({ kind: 'shared-address', machine: mi, interface: ii,
          message: `machines '${other}' and '${m.name}' both have address ${addr} on network '${net}': Corosync needs a distinct address per machine on each link` });
      }
      owner.set(addr, m.name);
      addresses.set(m.name, addr);
    });
    links.push({ linknumber: links.length, source: net, kind: 'geographic', addresses });
  }
  if (links.length === 0) {
    problems.push({ kind: 'no-common-network',
      message: `no network has an interface on every machine, so Corosync has no link (networks: ${c.networks.join(', ')})` });
  }

  if (c.heartbeat.length > 0) {
    const addresses = new Map<string, string>();
    const owner = new Map<string, string>();
    const known = new Set(c.machines.map((m) => m.name));
    c.heartbeat.forEach((h, hi) => {
      if (!known.has(h.machine)) {
        problems.push({ kind: 'heartbeat-unknown-machine', heartbeat: hi, message: `unknown machine '${h.machine}' (machines: ${[...known].join(', ')})` });
        return;
      }
      if (addresses.has(h.machine)) {
        problems.push({ kind: 'heartbeat-duplicate', heartbeat: hi, message: `machine '${h.machine}' has two heartbeat addresses` });
        return;
      }
      const other = owner.get(h.address);
      if (other !== undefined) {
        problems.push({ kind: 'heartbeat-shared-address', heartbeat: hi, message: `heartbeat address ${h.address} is already machine '${other}''s` });
      }
      const geo = c.machines.find((m) => m.name === h.machine)!.interfaces.find((i) => i.address === h.address);
      if (geo) {
        problems.push({ kind: 'heartbeat-shared-address', heartbeat: hi,
          message: `heartbeat address ${h.address} is machine '${h.machine}''s address on network '${geo.network}': the heartbeat path must be a different path` });
      }
      owner.set(h.address, h.machine);
      addresses.set(h.machine, h.address);
    });
    const missing = c.machines.filter((m) => !addresses.has(m.name) && !c.heartbeat.some((h) => h.machine === m.name)).map((m) => m.name);
    if (missing.length) {
      problems.push({ kind: 'heartbeat-missing',
        message: `the heartbeat link needs an address on every machine (Corosync links span all nodes); missing: ${missing.join(', ')}` });
    }
    links.push({ linknumber: links.length, source: 'heartbeat', kind: 'heartbeat', addresses });
  }
  if (links.length > MAX_KNET_LINKS) {
    problems.push({ kind: 'too-many-links', message: `${links.length} Corosync links; knet allows at most ${MAX_KNET_LINKS}` });
  }
  return { links, skipped, problems };
}

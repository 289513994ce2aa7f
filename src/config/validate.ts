import { corosyncLinks } from './cluster-links.js';
import type { TomlPath } from './positions.js';
import type { RawConfig } from './schema.js';

export interface RawIssue { path: TomlPath; message: string }

/**
 * Checks across sections, on the schema-valid document: every reference resolves, names, minors,
 * ports and files are not shared where they must be unique, and each GMD is a mirror the seed
 * allows (two sites; async: one machine per site, one primary and one secondary; at most one
 * primary; peers share a network). These are the static half of geo_verify (seed §6.4).
 */
export function crossCheck(c: RawConfig): RawIssue[] {
  const issues: RawIssue[] = [];
  const add = (path: TomlPath, message: string) => issues.push({ path, message });

  const unique = <T>(items: T[], nameOf: (x: T) => string, pathOf: (i: number) => TomlPath, what: string) => {
    const seen = new Map<string, number>();
    items.forEach((x, i) => {
      const n = nameOf(x);
      const first = seen.get(n);
      if (first !== undefined) add(pathOf(i), `duplicate ${what} '${n}' (also ${what} #${first + 1})`);
      else seen.set(n, i);
    });
  };
  unique(c.site, (s) => s.name, (i) => ['site', i, 'name'], 'site');
  unique(c.network, (n) => n.name, (i) => ['network', i, 'name'], 'network');
  unique(c.machine, (m) => m.name, (i) => ['machine', i, 'name'], 'machine');
  unique(c.gmd, (g) => g.name, (i) => ['gmd', i, 'name'], 'GMD');
  unique(c.gmd, (g) => String(g.minor), (i) => ['gmd', i, 'minor'], 'minor');

  const sites = new Set(c.site.map((s) => s.name));
  const networks = new Set(c.network.map((n) => n.name));
  const machines = new Map(c.machine.map((m) => [m.name, m] as const));
  const list = (s: Iterable<string>) => [...s].join(', ');

  const endpoints = new Map<string, string>();
  c.machine.forEach((m, i) => {
    if (!sites.has(m.site)) add(['machine', i, 'site'], `unknown site '${m.site}' (sites: ${list(sites)})`);
    const nets = new Set<string>();
    m.interface.forEach((itf, j) => {
      const p: TomlPath = ['machine', i, 'interface', j];
      if (!networks.has(itf.network)) add([...p, 'network'], `unknown network '${itf.network}' (networks: ${list(networks)})`);
      if (nets.has(itf.network)) add([...p, 'network'], `machine '${m.name}' has two interfaces on network '${itf.network}'`);
      nets.add(itf.network);
      const ep = `${itf.address}:${itf.port}`;
      const other = endpoints.get(ep);
      if (other !== undefined) add([...p, 'port'], `address ${ep} is already used by ${other}`);
      else endpoints.set(ep, `machine '${m.name}' network '${itf.network}'`);
    });
  });

  c.gmd.forEach((g, gi) => {
    const gp: TomlPath = ['gmd', gi];
    const seenMachines = new Set<string>();
    const bySite = new Map<string, number>();
    let primaries = 0;
    g.machine.forEach((gm, mi) => {
      const p: TomlPath = [...gp, 'machine', mi];
      const m = machines.get(gm.machine);
      if (!m) {
        add([...p, 'machine'], `unknown machine '${gm.machine}' (machines: ${list(machines.keys())})`);
        return;
      }
      if (seenMachines.has(gm.machine)) add([...p, 'machine'], `machine '${gm.machine}' is listed twice for GMD '${g.name}'`);
      seenMachines.add(gm.machine);
      bySite.set(m.site, (bySite.get(m.site) ?? 0) + 1);
      if (gm.role === 'primary') primaries++;
      if (gm.volume === gm.state_map) add([...p, 'state_map'], 'the state map must not be the volume itself');
      if (g.mode === 'async' && gm.role === 'none') add([...p, 'role'], "an async GMD needs role 'primary' or 'secondary' on each machine (seed §2.3.3)");
      for (const itf of m.interface) {
        if (itf.port + g.minor > 65535) add([...gp, 'minor'], `machine '${m.name}' port ${itf.port} + minor ${g.minor} exceeds 65535 (a GMD binds base port + minor)`);
      }
    });
    for (const s of sites) {
      if (!bySite.has(s)) add([...gp, 'machine'], `GMD '${g.name}' has no machine at site '${s}' (a mirror spans both sites)`);
    }
    if (primaries > 1) add([...gp, 'machine'], `GMD '${g.name}' has ${primaries} primaries; at most one machine may be primary`);
    if (g.mode === 'async') {
      for (const [s, n] of bySite) if (n > 1) add([...gp, 'machine'], `async GMD '${g.name}' has ${n} machines at site '${s}'; async allows one per site (seed §2.3.3)`);
      if (primaries !== 1) add([...gp, 'machine'], `async GMD '${g.name}' needs exactly one primary`);
    }
    // Peers at different sites must share at least one network, or GeoMessage cannot reach them.
    const ms = g.machine.map((gm) => machines.get(gm.machine)).filter((m) => m !== undefined);
    for (let a = 0; a < ms.length; a++) {
      for (let b = a + 1; b < ms.length; b++) {
        const ma = ms[a]!, mb = ms[b]!;
        if (ma.site === mb.site) continue;
        const shared = ma.interface.some((x) => mb.interface.some((y) => y.network === x.network));
        if (!shared) add([...gp, 'machine'], `machines '${ma.name}' and '${mb.name}' of GMD '${g.name}' share no network`);
      }
    }
  });

  // Per machine, two GMDs never share a volume or a state map.
  const files = new Map<string, string>();
  c.gmd.forEach((g, gi) => g.machine.forEach((gm, mi) => {
    for (const [k, f] of [['volume', gm.volume], ['state_map', gm.state_map]] as const) {
      const id = `${gm.machine}\0${f}`;
      const other = files.get(id);
      if (other !== undefined) add(['gmd', gi, 'machine', mi, k], `${f} on machine '${gm.machine}' is already used as ${other}`);
      else files.set(id, `${k} of GMD '${g.name}'`);
    }
  }));
  if (c.hageo) issues.push(...hageoCheck(c));
  return issues;
}

/**
 * With a `[hageo]` table the file describes a Pacemaker + Corosync cluster: the Corosync links it
 * gives must be usable (a network on every machine, distinct addresses per link, a heartbeat
 * address for every machine or none). Without the table these are only checked when a `georm hageo`
 * command renders the configuration.
 */
function hageoCheck(c: RawConfig): RawIssue[] {
  const h = c.hageo!;
  const { problems } = corosyncLinks({
    networks: c.network.map((n) => n.name),
    machines: c.machine.map((m) => ({ name: m.name, interfaces: m.interface })),
    heartbeat: h.heartbeat,
  });
  return problems.map((p): RawIssue => {
    switch (p.kind) {
      case 'shared-address': return { path: ['machine', p.machine, 'interface', p.interface, 'address'], message: p.message };
      case 'heartbeat-unknown-machine':
      case 'heartbeat-duplicate': return { path: ['hageo', 'heartbeat', p.heartbeat, 'machine'], message: p.message };
      case 'heartbeat-shared-address': return { path: ['hageo', 'heartbeat', p.heartbeat, 'address'], message: p.message };
      case 'heartbeat-missing': return { path: ['hageo', 'heartbeat'], message: p.message };
      default: return { path: ['hageo'], message: p.message };
    }
  });
}

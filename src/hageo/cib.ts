/**
 * Renders the Pacemaker CIB for the GMDs of a cluster file (`georm hageo cib`): written as cib.xml
 * before a cluster's first start, or loaded into a running one with `cibadmin --replace --scope
 * configuration --xml-file F` (a whole-CIB --replace is refused there: epoch 1 is older). Per GMD:
 * - a primitive `ocf:georm:gmd` (params `gmd`, `config`; `machine` defaults to the node name, which
 *   is the georm machine name because corosync.conf's nodelist uses it);
 * - a promotable clone: promoted-max=1, promoted-node-max=1, clone-max=2 (one instance per site),
 *   clone-node-max=1, notify=true (the agent learns of its peer's start/stop/promote);
 * - monitors per role with distinct intervals (Pacemaker tells them apart by interval), timeouts
 *   like DRBD's agent (start 240 s, stop 100 s, promote/demote/notify 90 s);
 * - a location preference for the Promoted role on the GMD's configured primary (for role `none`
 *   everywhere, the first machine listed), score PROMOTED_PREFERENCE. It is added to the agent's
 *   promotion score, whose levels (data quality) are far apart, so it only breaks ties between
 *   equally good copies: it decides where the GMD runs at first start and brings it back once the
 *   preferred node has resynced, never promotes worse data;
 * - when the cluster has machines that do not hold the GMD, a -INFINITY rule keeps it off them;
 * - resource-stickiness=1 on the clone (Pacemaker's default for clones, written out so it is
 *   visible): smaller than the preference, so the Promoted role moves back to the preferred node
 *   (cascading, the seed's hot standby) once both copies are equally good. Part 2's rotating groups
 *   raise it above the preference to stay put.
 * Fencing: the production default leaves `stonith-enabled` alone (Pacemaker's default, true): a real
 * cluster needs a fence device (SBD, fence agents) and Pacemaker runs nothing until it has one.
 * `noStonith` writes stonith-enabled=false for test clusters in namespaces, where no fence device
 * exists; the agent's resource-level fencing is then what keeps the data safe.
 */
import type { ClusterConfig, Gmd } from '../config/index.js';
import { GeormError } from '../util/errors.js';

export interface CibOptions {
  /** Write stonith-enabled=false (test clusters only; see above). */
  noStonith?: boolean;
  /** Pacemaker's dc-deadtime, e.g. "2s" (a lab's first start takes 20 s with the default). */
  dcDeadtime?: string;
  /** The cluster file's path on the nodes (the agent's `config`), default the file read. */
  nodeConfig?: string;
  /** Another agent instead of ocf:georm:gmd, "class:provider:type" (rehearsals with ocf:pacemaker:Stateful). */
  agent?: string;
}

/** Score of the Promoted-role preference for the GMD's primary machine. */
export const PROMOTED_PREFERENCE = 100;
export const CLONE_STICKINESS = 1;

/** Operation timeouts and monitor intervals, DRBD-like (see the file comment). */
export const OPERATIONS = [
  { name: 'start', interval: '0s', timeout: '240s' },
  { name: 'stop', interval: '0s', timeout: '100s' },
  { name: 'promote', interval: '0s', timeout: '90s' },
  { name: 'demote', interval: '0s', timeout: '90s' },
  { name: 'notify', interval: '0s', timeout: '90s' },
  { name: 'monitor', interval: '29s', timeout: '60s', role: 'Promoted' },
  { name: 'monitor', interval: '31s', timeout: '60s', role: 'Unpromoted' },
] as const;

/** Resource ids: `gmd-<name>` and `gmd-<name>-clone` (a prefix, since an XML id must not start with a digit). */
export const primitiveId = (gmd: string) => `gmd-${gmd}`;
export const cloneId = (gmd: string) => `gmd-${gmd}-clone`;

/** Where the Promoted role prefers to run: the primary, else (role none everywhere) the first machine listed. */
export function preferredMachine(g: Gmd): string {
  return (g.machines.find((m) => m.role === 'primary') ?? g.machines[0]!).machine;
}

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
const attrs = (a: Record<string, string | number | undefined>) =>
  Object.entries(a).filter(([, v]) => v !== undefined).map(([k, v]) => ` ${k}="${esc(String(v))}"`).join('');
const nv = (id: string, name: string, value: string | number) => `<nvpair${attrs({ id: `${id}-${name}`, name, value })}/>`;

function parseAgent(spec: string): { class: string; provider: string; type: string } {
  const m = /^(ocf):([A-Za-z0-9_.-]+):([A-Za-z0-9_.-]+)$/.exec(spec);
  if (!m) throw new GeormError('HAGEO_ERR_USAGE', `--agent must look like ocf:PROVIDER:TYPE (got '${spec}')`);
  return { class: m[1]!, provider: m[2]!, type: m[3]! };
}

export function renderCib(cfg: ClusterConfig, opts: CibOptions = {}): string {
  if (opts.dcDeadtime !== undefined && !/^\d+(ms|s|min)?$/.test(opts.dcDeadtime)) {
    throw new GeormError('HAGEO_ERR_USAGE', `--dc-deadtime must be a duration such as 2s or 20000ms (got '${opts.dcDeadtime}')`);
  }
  const agent = parseAgent(opts.agent ?? 'ocf:georm:gmd');
  const isGmdAgent = agent.provider === 'georm' && agent.type === 'gmd';
  const nodeConfig = opts.nodeConfig ?? cfg.source;
  const out: string[] = [];
  const o = (depth: number, line: string) => out.push(`${'  '.repeat(depth)}${line}`);

  o(0, '<cib validate-with="pacemaker-3.7" admin_epoch="0" epoch="1" num_updates="0">');
  o(1, '<configuration>');
  o(2, '<crm_config>');
  o(3, '<cluster_property_set id="cib-bootstrap-options">');
  o(4, nv('cib-bootstrap-options', 'cluster-name', cfg.hageo.clusterName));
  if (opts.noStonith) o(4, nv('cib-bootstrap-options', 'stonith-enabled', 'false'));
  if (opts.dcDeadtime !== undefined) o(4, nv('cib-bootstrap-options', 'dc-deadtime', opts.dcDeadtime));
  o(3, '</cluster_property_set>');
  o(2, '</crm_config>');
  o(2, '<nodes/>');
  o(2, '<resources>');
  for (const g of cfg.gmds) {
    const p = primitiveId(g.name), c = cloneId(g.name);
    o(3, `<clone${attrs({ id: c })}>`);
    o(4, `<meta_attributes${attrs({ id: `${c}-meta` })}>`);
    for (const [k, v] of [['promotable', 'true'], ['promoted-max', 1], ['promoted-node-max', 1], ['clone-max', 2],
      ['clone-node-max', 1], ['notify', 'true'], ['resource-stickiness', CLONE_STICKINESS]] as const) {
      o(5, nv(`${c}-meta`, k, v));
    }
    o(4, '</meta_attributes>');
    o(4, `<primitive${attrs({ id: p, class: agent.class, provider: agent.provider, type: agent.type })}>`);
    if (isGmdAgent) {
      o(5, `<instance_attributes${attrs({ id: `${p}-params` })}>`);
      o(6, nv(`${p}-params`, 'gmd', g.name));
      o(6, nv(`${p}-params`, 'config', nodeConfig));
      o(5, '</instance_attributes>');
    }
    o(5, '<operations>');
    for (const op of OPERATIONS) {
      const role = 'role' in op ? op.role : undefined;
      const id = `${p}-${op.name}${role ? `-${role.toLowerCase()}` : ''}`;
      o(6, `<op${attrs({ id, name: op.name, interval: op.interval, timeout: op.timeout, role })}/>`);
    }
    o(5, '</operations>');
    o(4, '</primitive>');
    o(3, '</clone>');
  }
  o(2, '</resources>');
  o(2, '<constraints>');
  for (const g of cfg.gmds) {
    const c = cloneId(g.name);
    const pref = preferredMachine(g);
    o(3, `<rsc_location${attrs({ id: `${c}-promoted-on-${pref}`, rsc: c, role: 'Promoted', node: pref, score: PROMOTED_PREFERENCE })}/>`);
    const holders = new Set(g.machines.map((m) => m.machine));
    if (cfg.machines.some((m) => !holders.has(m.name))) {
      o(3, `<rsc_location${attrs({ id: `${c}-only-on-its-machines`, rsc: c })}>`);
      o(4, `<rule${attrs({ id: `${c}-only-on-its-machines-rule`, score: '-INFINITY', 'boolean-op': 'and' })}>`);
      for (const m of holders) o(5, `<expression${attrs({ id: `${c}-not-${m}`, attribute: '#uname', operation: 'ne', value: m })}/>`);
      o(4, '</rule>');
      o(3, '</rsc_location>');
    }
  }
  o(2, '</constraints>');
  o(1, '</configuration>');
  o(1, '<status/>');
  o(0, '</cib>');
  return `${out.join('\n')}\n`;
}

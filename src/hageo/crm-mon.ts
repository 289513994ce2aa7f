/**
 * Reads `crm_mon --output-as=xml` into what georm needs: the nodes (online, standby, DC), quorum,
 * and for each resource instance its role and node. Used by `georm hageo status` and the test
 * lab's wait-for predicates. Pacemaker 2.1's XML (api-version 2.x).
 */
import { findAll, findFirst, parseXml, type XmlElement } from './xml.js';

export interface CrmNode { name: string; id: string; online: boolean; standby: boolean; dc: boolean; unclean: boolean }
export interface CrmResourceInstance {
  /** The resource id (clone instances: `gmd-x:0`, `gmd-x:1` or the bare id, as crm_mon prints it). */
  id: string;
  /** The clone it belongs to, if any. */
  clone?: string;
  agent: string;
  /** Started, Stopped, Promoted, Unpromoted, Starting, … as crm_mon prints it. */
  role: string;
  active: boolean;
  failed: boolean;
  /** The node it runs on (none when stopped). */
  node?: string;
}
export interface CrmStatus {
  /** Whether the local partition has quorum (false also when there is no DC yet). */
  quorum: boolean;
  dc?: string;
  nodes: CrmNode[];
  resources: CrmResourceInstance[];
}

const yes = (v: string | undefined) => v === 'true';

export function parseCrmMon(xml: string): CrmStatus {
  const doc = parseXml(xml);
  const dcEl = findFirst(doc, 'current_dc');
  const nodes: CrmNode[] = findAll(findFirst(doc, 'nodes') ?? doc, 'node')
    .filter((n) => n.attrs.online !== undefined)
    .map((n) => ({ name: n.attrs.name ?? '', id: n.attrs.id ?? '', online: yes(n.attrs.online), standby: yes(n.attrs.standby),
      dc: yes(n.attrs.is_dc), unclean: yes(n.attrs.unclean) }));
  const resources: CrmResourceInstance[] = [];
  const addResource = (r: XmlElement, clone?: string) => {
    const on = r.children.filter((c) => c.name === 'node').map((c) => c.attrs.name ?? '');
    const base: CrmResourceInstance = { id: r.attrs.id ?? '', agent: r.attrs.resource_agent ?? '', role: r.attrs.role ?? '',
      active: yes(r.attrs.active), failed: yes(r.attrs.failed) };
    if (clone !== undefined) base.clone = clone;
    if (on.length === 0) resources.push(base);
    for (const node of on) resources.push({ ...base, node });
  };
  const top = findFirst(doc, 'resources');
  const walk = (el: XmlElement, clone?: string) => {
    for (const c of el.children) {
      if (c.name === 'resource') addResource(c, clone);
      else if (c.name === 'clone') walk(c, c.attrs.id);
      else if (c.name === 'group' || c.name === 'bundle') walk(c, clone);
    }
  };
  if (top) walk(top);
  const status: CrmStatus = { quorum: dcEl?.attrs.present === 'true' && yes(dcEl.attrs.with_quorum), nodes, resources };
  if (dcEl?.attrs.present === 'true' && dcEl.attrs.name) status.dc = dcEl.attrs.name;
  return status;
}

/** Nodes where instances of `clone` have `role` (e.g. 'Promoted'). */
export function nodesWithRole(s: CrmStatus, clone: string, role: string): string[] {
  return s.resources.filter((r) => r.clone === clone && r.role === role && r.node !== undefined).map((r) => r.node!);
}

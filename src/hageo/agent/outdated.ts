/**
 * The cluster's record that a node's copy of a GMD is outdated (rule 10 of DESIGN §9, DRBD's
 * resource-level fencing): a permanent node attribute `georm-outdated-<gmd>` on that node, whose
 * value says who recorded it and when. The agent's promote refuses on a node that carries it and
 * its promotion score is 0 there. It is written only by a partition that has quorum (a CIB write
 * succeeds locally without quorum, so quorum is checked first) and removed once the peer is in
 * sync again (the agent's monitor/notify) or by an operator with --force.
 */
import { GeormError } from '../../util/errors.js';
import { crm, crmAsync, CRM_EX_NOSUCH, partitionHasQuorum, partitionHasQuorumAsync } from './crm.js';

export function outdatedAttribute(gmd: string): string { return `georm-outdated-${gmd}`; }

export interface OutdatedRecord { node: string; gmd: string; value: string }

/** The record on `node` for `gmd`, null when there is none. Throws when the CIB cannot be read. */
export function readOutdated(gmd: string, node: string): OutdatedRecord | null {
  const r = crm('crm_attribute', ['-N', node, '-n', outdatedAttribute(gmd), '-l', 'forever', '-G', '-q']);
  if (r.code === CRM_EX_NOSUCH || (r.code === 0 && r.stdout.trim() === '')) return null;
  if (r.code !== 0) throw new GeormError('HAGEO_ERR_CIB', `cannot read the outdated record of ${gmd} on ${node}: crm_attribute exited ${r.code}: ${r.stderr.trim()}`);
  return { node, gmd, value: r.stdout.trim() };
}

/** Records `peer` outdated for `gmd`; refuses (and writes nothing) without quorum. */
export function recordOutdated(gmd: string, peer: string, by: string): OutdatedRecord {
  const q = partitionHasQuorum();
  if (!q.quorate) throw new GeormError('HAGEO_ERR_NO_QUORUM', `not recording ${peer} outdated for ${gmd}: ${q.why}; writes the peer will not have must not be acknowledged`);
  const value = `by ${by} at ${new Date().toISOString()}`;
  const r = crm('crm_attribute', ['-N', peer, '-n', outdatedAttribute(gmd), '-l', 'forever', '-v', value]);
  if (r.code !== 0) throw new GeormError('HAGEO_ERR_CIB', `recording ${peer} outdated for ${gmd} failed: crm_attribute exited ${r.code}: ${r.stderr.trim()}`);
  const back = readOutdated(gmd, peer);
  if (!back) throw new GeormError('HAGEO_ERR_CIB', `recording ${peer} outdated for ${gmd}: the attribute is not in the CIB after writing it`);
  return back;
}

/** Removes the record (nothing to do when there is none). */
export function clearOutdated(gmd: string, node: string): boolean {
  if (!readOutdated(gmd, node)) return false;
  const r = crm('crm_attribute', ['-N', node, '-n', outdatedAttribute(gmd), '-l', 'forever', '-D']);
  if (r.code !== 0 && r.code !== CRM_EX_NOSUCH) throw new GeormError('HAGEO_ERR_CIB', `removing the outdated record of ${gmd} on ${node} failed: crm_attribute exited ${r.code}: ${r.stderr.trim()}`);
  return true;
}

/** recordOutdated() for the GMD process (does not block its event loop); same checks, same order. */
export async function recordOutdatedAsync(gmd: string, peer: string, by: string): Promise<void> {
  const q = await partitionHasQuorumAsync();
  if (!q.quorate) throw new GeormError('HAGEO_ERR_NO_QUORUM', `not recording ${peer} outdated for ${gmd}: ${q.why}`);
  const value = `by ${by} at ${new Date().toISOString()}`;
  const r = await crmAsync('crm_attribute', ['-N', peer, '-n', outdatedAttribute(gmd), '-l', 'forever', '-v', value]);
  if (r.code !== 0) throw new GeormError('HAGEO_ERR_CIB', `recording ${peer} outdated for ${gmd} failed: crm_attribute exited ${r.code}: ${r.stderr.trim()}`);
  const back = await crmAsync('crm_attribute', ['-N', peer, '-n', outdatedAttribute(gmd), '-l', 'forever', '-G', '-q']);
  if (back.code !== 0 || !back.stdout.trim()) throw new GeormError('HAGEO_ERR_CIB', `recording ${peer} outdated for ${gmd}: the attribute is not in the CIB after writing it (${back.code})`);
}

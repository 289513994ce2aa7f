/**
 * Promotion scores from the quality of the data here (DRBD's model), set as Pacemaker's
 * promotion attribute (crm_attribute --promotion, lifetime reboot) from start, monitor and notify.
 * Pacemaker promotes the instance with the highest score; an instance without a score is never
 * promoted. The levels are documented in the agent's meta-data and docs/hageo.md.
 */
import type { HaStatus } from '../../gmd/promotion.js';
import { crm } from './crm.js';
import { ocfLog } from './ocf.js';

export const SCORE = {
  /** Up to date: mirroring with the peer, not the target of a resync. */
  UP_TO_DATE_MIRRORING: 10000,
  /** Up to date as far as anyone knows: no peer to compare with, and not recorded outdated. */
  PEER_UNKNOWN: 1000,
  /** The target of a resync, or recorded outdated in the cluster: do not promote. */
  OUTDATED: 0,
} as const;

/** The score for this side, or null when it must have none (divergence, or the GMD not running). */
export function scoreFor(st: HaStatus | null, recordedOutdated: boolean): number | null {
  if (!st || st.state !== 'AVAILABLE') return null;
  // Both sides hold writes the other lacks: a human decides (unify); no automatic promotion at all.
  if (st.localDirty && st.peerMapDirty === true) return null;
  if (recordedOutdated) return SCORE.OUTDATED;
  if (st.peer) {
    if (st.peerMapDirty !== false) return SCORE.OUTDATED; // the peer holds writes we lack (or would not say)
    if (st.resync?.running && st.resync.direction === 'pull') return SCORE.OUTDATED;
    return SCORE.UP_TO_DATE_MIRRORING;
  }
  return SCORE.PEER_UNKNOWN;
}

/** Sets (or with null removes) this node's promotion score. A failure is logged, never fatal. */
export function applyScore(score: number | null, env: NodeJS.ProcessEnv = process.env): boolean {
  const args = score === null ? ['--promotion', '-l', 'reboot', '-D'] : ['--promotion', '-l', 'reboot', '-v', String(score)];
  const r = crm('crm_attribute', args, env);
  if (r.code !== 0) {
    ocfLog('debug', `crm_attribute ${args.join(' ')} failed (${r.code}): ${r.stderr.trim()} (not in a cluster?)`);
    return false;
  }
  return true;
}

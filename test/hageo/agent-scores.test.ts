/**
 * The promotion score levels (src/hageo/agent/scores.ts) for the states the live tests cannot reach
 * cheaply: divergence and a GMD that is not AVAILABLE have no score at all; an active peer that does
 * not say whether its map is dirty counts as outdated here. (The live levels 10000/1000/0 are asserted
 * against real GMDs in agent-actions.test.ts.)
 */
import t from 'tap';
import { scoreFor, SCORE } from '../../src/hageo/agent/scores.js';
import type { HaStatus } from '../../src/gmd/promotion.js';

const base: HaStatus = {
  gmd: 'g', machine: 'a', state: 'AVAILABLE', mode: 'mwc', role: 'none', exposed: false, promoted: false, peer: 'b',
  localDirty: false, staleRegions: 0, inconsistentRegions: 0, peerMapDirty: false, peerRole: 'none', resync: null, nbdUris: [],
  fence: { enabled: true, held: 0, failed: 0 },
};

t.equal(scoreFor(base, false), SCORE.UP_TO_DATE_MIRRORING, 'in sync with the peer: highest');
t.equal(scoreFor({ ...base, localDirty: true }, false), SCORE.UP_TO_DATE_MIRRORING, 'resync source (this side holds what the peer lacks): highest');
t.equal(scoreFor({ ...base, localDirty: true, peerMapDirty: true }, false), null, 'both maps dirty (divergence): no score');
t.equal(scoreFor({ ...base, localDirty: true, peerMapDirty: true }, true), null, 'divergence wins over the outdated record: no score');
t.equal(scoreFor({ ...base, peerMapDirty: true }, false), SCORE.OUTDATED, 'the peer holds writes we lack: 0');
t.equal(scoreFor({ ...base, peerMapDirty: null }, false), SCORE.OUTDATED, 'an active peer that does not answer: 0');
t.equal(scoreFor({ ...base, resync: { running: true, direction: 'pull', percent: 10 } }, false), SCORE.OUTDATED, 'pulling a resync: 0');
t.equal(scoreFor({ ...base, peer: null, peerMapDirty: null }, false), SCORE.PEER_UNKNOWN, 'no peer: peer unknown');
t.equal(scoreFor({ ...base, peer: null, peerMapDirty: null }, true), SCORE.OUTDATED, 'no peer and recorded outdated: 0');
t.equal(scoreFor({ ...base, state: 'STOPPED' }, false), null, 'not AVAILABLE: no score');
t.equal(scoreFor(null, false), null, 'no process: no score');
t.ok(SCORE.UP_TO_DATE_MIRRORING > SCORE.PEER_UNKNOWN && SCORE.PEER_UNKNOWN > SCORE.OUTDATED, 'levels are ordered');

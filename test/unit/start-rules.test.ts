import t from 'tap';
import { decideStart, startRefusalText, START_REFUSAL_CODES, type StartFacts } from '../../src/gmd/device/start-rules.js';
import type { PeerInfo } from '../../src/gmd/protocol.js';

/**
 * The start rules as a pure function (src/gmd/device/start-rules.ts): each rule refuses with its
 * code, earlier rules win over later ones, and the allowed cases name the peer to join. The same
 * rules run end to end, between real GMD daemons, in test/gmd/startrules.test.ts.
 */

function peerInfo(machine: string, over: Partial<PeerInfo> = {}): PeerInfo {
  return {
    machine, gmd: 'g', minor: 1, size: 1 << 20, mode: 'mwc', role: 'secondary', state: 'AVAILABLE',
    mapDirty: false, activePeers: [], regionSize: 65536, configDigest: '', ...over,
  };
}

function facts(over: Partial<StartFacts> = {}): StartFacts {
  return {
    minor: 1, size: 1 << 20, mode: 'mwc', role: 'primary', localDirty: false, dirtyRegions: 0,
    peers: ['beta'], infos: new Map([['beta', peerInfo('beta')]]), unreachable: [], downGiven: new Set(), ...over,
  };
}

const ruleOf = (f: StartFacts): string => {
  const d = decideStart(f);
  return d.refusal ? START_REFUSAL_CODES[d.refusal.rule] : `allowed:${d.peer ?? 'none'}${d.stopPeerFirst ? ':stop-first' : ''}`;
};

t.test('each rule refuses with its own code', async (t) => {
  t.equal(ruleOf(facts()), 'allowed:beta', 'an AVAILABLE secondary peer, clean maps: join it');
  t.equal(ruleOf(facts({ infos: new Map([['beta', peerInfo('beta', { size: 2 << 20 })]]) })), 'GMD_ERR_START_MISMATCH');
  t.equal(ruleOf(facts({ infos: new Map([['beta', peerInfo('beta', { state: 'DEFINED', size: 0, mode: 'sync' })]]) })), 'GMD_ERR_START_PEER_NOT_AVAILABLE',
    'a DEFINED peer\'s placeholder mode and size are not compared');
  t.equal(ruleOf(facts({ infos: new Map([['beta', peerInfo('beta', { state: 'STARTING' })]]) })), 'GMD_ERR_START_PEER_STARTING');
  t.equal(ruleOf(facts({ peers: ['beta', 'gamma'], infos: new Map([['beta', peerInfo('beta')], ['gamma', peerInfo('gamma')]]) })), 'GMD_ERR_START_MULTIPLE_PEERS');
  t.equal(ruleOf(facts({ localDirty: true, dirtyRegions: 3, infos: new Map([['beta', peerInfo('beta', { mapDirty: true })]]) })), 'GMD_ERR_START_DIVERGENCE');
  t.equal(ruleOf(facts({ infos: new Map([['beta', peerInfo('beta', { role: 'primary' })]]) })), 'GMD_ERR_START_BOTH_PRIMARY');
  t.equal(ruleOf(facts({ localDirty: true, dirtyRegions: 3 })), 'GMD_ERR_START_LOCAL_STALE');
  t.equal(ruleOf(facts({ infos: new Map(), unreachable: ['beta'] })), 'GMD_ERR_START_PEER_UNREACHABLE');
  t.equal(ruleOf(facts({ infos: new Map([['beta', peerInfo('beta', { state: 'STOPPED' })]]) })), 'GMD_ERR_START_PEER_NOT_AVAILABLE');
});

t.test('gmddown changes what is allowed', async (t) => {
  t.equal(ruleOf(facts({ infos: new Map(), unreachable: ['beta'], downGiven: new Set(['beta']) })), 'allowed:none', 'a down peer is not waited for');
  t.equal(ruleOf(facts({ localDirty: true, dirtyRegions: 3, downGiven: new Set(['beta']) })), 'allowed:beta:stop-first',
    'a peer given as down but AVAILABLE is stopped first, also with a dirty local map');
});

t.test('earlier rules win, in the order an operator fixes them', async (t) => {
  const both = new Map([['beta', peerInfo('beta', { size: 2 << 20, state: 'STARTING' })]]);
  t.equal(ruleOf(facts({ infos: both })), 'GMD_ERR_START_MISMATCH', 'a different definition is reported before a peer that is starting');
  const dirtyPrimary = new Map([['beta', peerInfo('beta', { role: 'primary', mapDirty: true })]]);
  t.equal(ruleOf(facts({ localDirty: true, dirtyRegions: 1, infos: dirtyPrimary })), 'GMD_ERR_START_DIVERGENCE', 'divergence before both primary');
});

t.test('the texts name the GMD, the peer and what to do', async (t) => {
  t.match(startRefusalText('g', 'alpha', { rule: 'LOCAL_STALE', peer: 'beta', dirtyRegions: 7 }), /can't start g: remote peer beta is AVAILABLE .* 7 dirty region\(s\); .*gmddown beta/);
  t.match(startRefusalText('g', 'alpha', { rule: 'DIVERGENCE', peer: 'beta' }), /state maps on alpha and beta are both dirty; .*georm unify g --master/);
  t.equal(START_REFUSAL_CODES.JOIN_FAILED, 'GMD_ERR_START_PEER_UNREACHABLE', 'a failed join reads as an unreachable peer, as before');
});

/**
 * The start rules of DESIGN §4 item 4 as one pure function over what start learned from the peers,
 * and the catalogue of every refusal: its rule, its stable error code (GMD_ERR_START_<RULE>) and its
 * text. Nothing here talks to a peer or changes a state: lifecycle.ts asks, decides with these, acts.
 */

import { GeormError } from '../../util/errors.js';
import type { GmdMode, GmdRole, PeerInfo } from '../protocol.js';

/** Why start refuses, with what the message names. */
export type StartRefusal =
  | { rule: 'MISMATCH'; differences: string[] }
  | { rule: 'PEER_STARTING'; peer: string }
  | { rule: 'MULTIPLE_PEERS'; peers: string[] }
  | { rule: 'DIVERGENCE'; peer: string }
  | { rule: 'BOTH_PRIMARY'; peer: string }
  | { rule: 'LOCAL_STALE'; peer: string; dirtyRegions: number }
  | { rule: 'PEER_UNREACHABLE'; peer: string }
  | { rule: 'PEER_NOT_AVAILABLE'; peer: string; peerState: string }
  | { rule: 'PEER_NOT_STOPPED'; peer: string; reason: string }
  | { rule: 'JOIN_FAILED'; peer: string; reason: string };

export type StartRule = StartRefusal['rule'];

/** The error code of each refusal (grep for these; the CLI and tests match on them). */
export const START_REFUSAL_CODES = {
  MISMATCH: 'GMD_ERR_START_MISMATCH',
  PEER_STARTING: 'GMD_ERR_START_PEER_STARTING',
  MULTIPLE_PEERS: 'GMD_ERR_START_MULTIPLE_PEERS',
  DIVERGENCE: 'GMD_ERR_START_DIVERGENCE',
  BOTH_PRIMARY: 'GMD_ERR_START_BOTH_PRIMARY',
  LOCAL_STALE: 'GMD_ERR_START_LOCAL_STALE',
  PEER_UNREACHABLE: 'GMD_ERR_START_PEER_UNREACHABLE',
  PEER_NOT_AVAILABLE: 'GMD_ERR_START_PEER_NOT_AVAILABLE',
  PEER_NOT_STOPPED: 'GMD_ERR_START_PEER_NOT_STOPPED',
  // The peer answered hello but its join failed: to the operator that is an unreachable peer too.
  JOIN_FAILED: 'GMD_ERR_START_PEER_UNREACHABLE',
} as const satisfies Record<StartRule, `GMD_ERR_START_${string}`>;

/** The text of a refusal: what is wrong and what the operator does about it. */
export function startRefusalText(gmd: string, machine: string, r: StartRefusal): string {
  switch (r.rule) {
    case 'MISMATCH':
      return `can't start ${gmd}: the remote peer's definition differs (${r.differences.join('; ')}); make the GMD definitions identical (georm verify shows all differences)`;
    case 'PEER_STARTING':
      return `can't start ${gmd}: remote peer ${r.peer} is in the process of starting; wait until it is AVAILABLE and start again`;
    case 'MULTIPLE_PEERS':
      return `can't start ${gmd}: more than one remote peer is active (${r.peers.join(', ')}); stop all but one of them (stopgmd) first`;
    case 'DIVERGENCE':
      return `can't start ${gmd}: data divergence — the state maps on ${machine} and ${r.peer} are both dirty; decide which site holds the right data and run 'georm unify ${gmd} --master <machine> --preview', then without --preview`;
    case 'BOTH_PRIMARY':
      return `can't start ${gmd}: the AVAILABLE remote peer ${r.peer} is also primary; one side must be secondary (change the role in DEFINED state)`;
    case 'LOCAL_STALE':
      return `can't start ${gmd}: remote peer ${r.peer} is AVAILABLE and the local state map has ${r.dirtyRegions} dirty region(s); stop the GMD on ${r.peer} (stopgmd), start here with gmddown ${r.peer}, then start ${r.peer} so the data flows from here`;
    case 'PEER_UNREACHABLE':
      return `can't start ${gmd}: remote peer ${r.peer} is not reachable on any geographic network; if it is down, run 'gmddown -l ${gmd} ${r.peer}' (georm down) and start again`;
    case 'PEER_NOT_AVAILABLE':
      return `can't start ${gmd}: remote peer ${r.peer} is up but its GMD is ${r.peerState}, not AVAILABLE; start it there first, or run 'gmddown -l ${gmd} ${r.peer}' and start again`;
    case 'PEER_NOT_STOPPED':
      return `can't start ${gmd}: remote peer ${r.peer} is AVAILABLE although gmddown was given, and stopping it failed (${r.reason}); stop it there (stopgmd) and start again`;
    case 'JOIN_FAILED':
      return `can't start ${gmd}: joining remote peer ${r.peer} failed (${r.reason}); retry, or use gmddown`;
  }
}

/** The refusal as the error start() throws (exit code 1 for the CLI). */
export function startRefusalError(gmd: string, machine: string, r: StartRefusal): GeormError {
  return new GeormError(START_REFUSAL_CODES[r.rule], startRefusalText(gmd, machine, r), { exitCode: 1 });
}

/** Whether an error is one of start's refusals. */
export function isStartRefusal(e: unknown): e is GeormError {
  return e instanceof GeormError && e.code.startsWith('GMD_ERR_START_');
}

/** What start knows when it decides: this side's definition and map, and each peer's hello (or none). */
export interface StartFacts {
  minor: number;
  size: number;
  mode: GmdMode;
  role: GmdRole;
  /** The local state map has stale or inconsistent regions, and how many. */
  localDirty: boolean;
  dirtyRegions: number;
  /** All remote peers of the GMD, in configuration order. */
  peers: readonly string[];
  /** The hello replies, in the order they arrived. */
  infos: ReadonlyMap<string, PeerInfo>;
  /** Peers that did not answer within the hello timeout. */
  unreachable: readonly string[];
  /** Peers gmddown was given for. */
  downGiven: ReadonlySet<string>;
}

/**
 * Start may go ahead: with `peer` (the AVAILABLE peer to join, or null for stale marking). With
 * `stopPeerFirst`, that peer was given as down although it is AVAILABLE: start stops it and runs alone.
 */
export interface StartAllowed { refusal: null; peer: string | null; stopPeerFirst: boolean }
export type StartDecision = StartAllowed | { refusal: StartRefusal };

/** Applies the start rules, in the order an operator should fix them. */
export function decideStart(f: StartFacts): StartDecision {
  const refuse = (refusal: StartRefusal): StartDecision => ({ refusal });
  for (const [p, info] of f.infos) {
    const differences: string[] = [];
    // A DEFINED peer has not loaded its attributes: its mode and size are placeholders. They are
    // compared when it starts (its own hello reaches us then).
    const loaded = info.state !== 'DEFINED';
    if (loaded && info.mode !== f.mode) differences.push(`mode ${f.mode} here, ${info.mode} on ${p}`);
    if (info.minor !== f.minor) differences.push(`minor ${f.minor} here, ${info.minor} on ${p}`);
    if (loaded && info.size !== f.size) differences.push(`size ${f.size} here, ${info.size} on ${p}`);
    if (differences.length) return refuse({ rule: 'MISMATCH', differences });
  }
  for (const [p, info] of f.infos) {
    if (info.state === 'STARTING') return refuse({ rule: 'PEER_STARTING', peer: p });
  }
  const available = f.peers.filter((p) => f.infos.get(p)?.state === 'AVAILABLE');
  if (available.length > 1) return refuse({ rule: 'MULTIPLE_PEERS', peers: available });
  for (const [p, info] of f.infos) {
    if (f.localDirty && info.mapDirty) return refuse({ rule: 'DIVERGENCE', peer: p });
  }
  const peer = available[0] ?? null;
  if (peer) {
    const info = f.infos.get(peer)!;
    if (f.role === 'primary' && info.role === 'primary') return refuse({ rule: 'BOTH_PRIMARY', peer });
    if (f.localDirty && !f.downGiven.has(peer)) return refuse({ rule: 'LOCAL_STALE', peer, dirtyRegions: f.dirtyRegions });
  }
  for (const p of f.peers) {
    if (f.downGiven.has(p) || available.includes(p)) continue;
    if (f.unreachable.includes(p)) return refuse({ rule: 'PEER_UNREACHABLE', peer: p });
    return refuse({ rule: 'PEER_NOT_AVAILABLE', peer: p, peerState: f.infos.get(p)?.state ?? 'unknown' });
  }
  // A peer given as down but in fact AVAILABLE is stopped (DESIGN §4 item 5).
  return { refusal: null, peer, stopPeerFirst: peer !== null && f.downGiven.has(peer) };
}

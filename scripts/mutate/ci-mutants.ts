/**
 * The fixed mutant set that `.ci/run` checks on every run (`npm run mutate:ci`): each entry breaks
 * one data-safety rule the way a plausible bug would, and names the tests that must fail on it.
 *
 * A mutant is defined by the code it changes, not by a file and line: each edit's `find` is looked
 * up in the compiled JavaScript under dist/src (whitespace ignored, since tsc re-flows one-line
 * `if`s), wherever the code has moved to, and must occur exactly once. When a refactor changes or
 * moves that code out of reach, the run fails with "mutant no longer applies, update it" instead of
 * passing without testing anything: update `find`/`replace` to the new code (same meaning).
 * `replace` is JavaScript, written against the compiled names.
 */
export interface MutantEdit {
  /** Compiled code to replace (whitespace-insensitive, must occur exactly once under dist/src). */
  find: string;
  /** What it becomes (JavaScript). */
  replace: string;
}

export interface KillingTest {
  /** Compiled test file, relative to the repository root. */
  file: string;
  /** Top-level test names to run (regular expressions for tap's TAP_GREP); all when absent. */
  grep?: string[];
}

export interface CiMutant {
  id: string;
  /** The DESIGN §4 rule (or issue hole) it breaks. */
  rule: string;
  /** The bug it stands for, in words. */
  what: string;
  edits: MutantEdit[];
  /** Killed when at least one of these reports a failed assertion (run in order until one does). */
  tests: KillingTest[];
  /**
   * Set while the test that kills this mutant is not on this branch yet: the edits are still
   * checked to apply, the tests are not run, and the run reports it as PENDING (never as killed).
   */
  pending?: string;
}

export const CI_MUTANTS: CiMutant[] = [
  // ---- the four holes of issue 21 ------------------------------------------------------------
  {
    id: 'hole1-sync-ack-before-remote',
    rule: 'rule 1 (sync/MWC): a write is acknowledged only once both sides have it',
    what: 'sync acknowledges a write once the local copy is done and sends the remote copy in the background',
    edits: [
      {
        // The sync write mode (src/gmd/device/write-path.ts): issue the local write at once and the
        // remote copy in the background; the peer's answer no longer gates the acknowledgement.
        find: "sync: { issue: (op) => this.remote(op), localDone: (op, e) => this.finish(op, e, op.ok), remoteDone: (op, err) => { op.ok = err === null; if (!op.ok) this.membership.peerFailed(op.peer, err); this.writeLocal(op.offset, op.data, op.fua, op.localDone); }, },",
        replace: "sync: { issue: (op) => { op.ok = true; this.remote(op); this.writeLocal(op.offset, op.data, op.fua, op.localDone); }, localDone: (op, e) => this.finish(op, e, op.ok), remoteDone: (op, err) => { if (err !== null) this.membership.peerFailed(op.peer, err); }, },",
      },
    ],
    tests: [{ file: 'dist/test/gmd/frozen-peer.test.js', grep: ['^sync: no write is acknowledged while the secondary is frozen'] }],
  },
  {
    id: 'hole2-write-before-mark-durable',
    rule: 'rule 1: a region is durably marked before a write to it is issued',
    what: 'the device issues a write without waiting for the state map to make its mark durable',
    edits: [{
      find: 'if (map.beginWriteCb(c.first, c.last, c.marked)) c.marked();',
      replace: 'map.beginWriteCb(c.first, c.last, () => { }); c.marked();',
    }],
    tests: [{ file: 'dist/test/gmd/mark-order.test.js' }],
  },
  {
    id: 'hole3-flush-clean-gate-skipped',
    rule: 'rule 2: a region is cleaned only once both volumes flushed its writes',
    what: 'an application FLUSH cleans the regions whether or not the peer confirmed its flush',
    edits: [{
      find: 'if (await remote) this.gate.covered(mark);',
      replace: 'this.gate.covered(mark); await remote;',
    }],
    tests: [{ file: 'dist/test/gmd/frozen-peer.test.js', grep: ['^sync: a FLUSH the frozen secondary never confirms cleans nothing'] }],
  },
  {
    id: 'hole4a-ordered-dispatch-unordered',
    rule: 'rule 1 (async): the secondary holds a prefix of the write order',
    what: 'GeoMessage dispatches ordered messages as they arrive instead of in send order',
    edits: [{ find: 'if (p.flags & F_ORDERED) {', replace: 'if (p.flags & 0) {' }],
    tests: [
      { file: 'dist/test/geomessage/transport.test.js', grep: ['^ordered messages are delivered in send order through a path that reorders'] },
      { file: 'dist/test/geomessage/wanem.test.js' },
    ],
  },
  {
    id: 'hole4b-async-batches-unordered',
    rule: 'rule 1 (async): the secondary holds a prefix of the write order',
    what: "the async write batcher sends its batches on GeoMessage's unordered channel",
    edits: [{
      find: "new WriteBatcher(this.ctx.net, peer, this.ctx.res?.attrs.mode === 'async', BATCH_BYTES)",
      replace: 'new WriteBatcher(this.ctx.net, peer, false, BATCH_BYTES)',
    }],
    tests: [{ file: 'dist/test/gmd/async-reorder.test.js' }],
  },
  // ---- other rules ---------------------------------------------------------------------------
  {
    id: 'resync-direction-swapped',
    rule: 'rule 3: data flows from the dirty side to the clean side',
    what: 'a rejoin pulls when this side is the dirty one, and pushes when the peer is',
    edits: [{
      find: "this.startResync(peer, localDirty ? 'push' : 'pull');",
      replace: "this.startResync(peer, localDirty ? 'pull' : 'push');",
    }],
    tests: [{ file: 'dist/test/gmd/safety-rules.test.js', grep: ['^rule 3'] }],
  },
  {
    id: 'start-divergence-check-removed',
    rule: 'rule 4/7: start refuses when both maps are dirty (divergence)',
    what: 'start no longer refuses when the local and the peer state maps are both dirty',
    edits: [{
      find: "if (f.localDirty && info.mapDirty) return refuse({ rule: 'DIVERGENCE', peer: p });",
      replace: "if (false) return refuse({ rule: 'DIVERGENCE', peer: p });",
    }],
    tests: [{ file: 'dist/test/gmd/divergence.test.js', grep: ['^divergence staged'] }],
  },
  {
    id: 'start-local-stale-check-removed',
    rule: 'rule 4: start refuses when the peer is AVAILABLE and the local map is dirty (the data would flow the wrong way)',
    what: 'start goes on with a dirty local map while the peer is AVAILABLE and no gmddown was given',
    edits: [{
      find: "if (f.localDirty && !f.downGiven.has(peer)) return refuse({ rule: 'LOCAL_STALE', peer, dirtyRegions: f.dirtyRegions });",
      replace: "if (false) return refuse({ rule: 'LOCAL_STALE', peer, dirtyRegions: f.dirtyRegions });",
    }],
    tests: [{ file: 'dist/test/gmd/startrules.test.js', grep: ['^start rules \\(two machines\\)'] }],
  },
  {
    id: 'async-hwm-wait-removed',
    rule: 'rule 1 (async): the lag is bounded by HWM',
    what: 'an async write is acknowledged at once however much data is still in flight to the peer',
    edits: [{
      find: 'if (this.hwm.over(res.attrs.hwm)) this.hwm.wait(op.admitted); else this.admitted(op);',
      replace: 'this.admitted(op);',
    }],
    tests: [{ file: 'dist/test/gmd/safety-rules.test.js', grep: ['^rule 1 \\(async\\)'] }],
  },
  {
    id: 'statemap-mark-not-awaited',
    rule: 'rule 1: a region is durably marked before a write to it is issued',
    what: "the state map tells its callers a region's mark is durable before its fdatasync (beginWrite and beginWriteCb)",
    edits: [
      { find: 'return wait === null ? RESOLVED : wait.promise;', replace: 'return RESOLVED;' },
      { find: 'if (wait === null) return true; wait.callbacks.push(cb); return false;', replace: 'return true;' },
    ],
    tests: [
      { file: 'dist/test/statemap/durability.test.js' },
      { file: 'dist/test/gmd/mark-order.test.js', grep: ['^async: every volume write of a running gmd follows'] },
    ],
  },
  {
    id: 'statemap-local-only-kept-clean',
    rule: 'rule 1/2: a write that reached only one side leaves its region stale',
    what: "endWrite(…, 'local-only') no longer marks the region stale",
    edits: [{ find: "if (outcome === 'local-only') {", replace: 'if (false) {' }],
    tests: [{ file: 'dist/test/statemap/statemap.test.js', grep: ['^(?!no 32 GB limit)'] }],
  },
  {
    id: 'clean-gate-unconfirmed-flush-cleans',
    rule: 'rule 2: a region is cleaned only once both volumes flushed its writes',
    what: "the clean gate's own flush cleans the regions even when the peer could not confirm its flush",
    edits: [{
      find: "(ok) => { if (m.session !== this.session) return; this.release(m.gen, ok ? 'both' : 'local-only'); }",
      replace: "(ok) => { if (m.session !== this.session) return; this.release(m.gen, 'both'); }",
    }],
    tests: [{ file: 'dist/test/gmd/clean-gate.test.js' }],
  },
  {
    id: 'geomsg-replay-check-removed',
    rule: 'rule 9: GeoMessage drops replayed packets',
    what: 'the transport accepts a packet number it has already seen (a replayed packet)',
    edits: [{
      find: "if (!recv.replay.check(p.pseq)) { c.duplicates++; return drop(net, 'replay'); }",
      replace: 'recv.replay.check(p.pseq);',
    }],
    tests: [{ file: 'dist/test/geomessage/transport.test.js', grep: ['^forged, truncated, replayed and random packets'] }],
  },
  {
    id: 'geomsg-tag-not-verified',
    rule: 'rule 9: GeoMessage accepts only packets authenticated with the cluster key',
    what: "the packet tag check accepts any tag",
    edits: [{ find: "return authFor(key).verify(buf) ? null : 'auth';", replace: 'return null;' }],
    tests: [{ file: 'dist/test/geomessage/packet.test.js' }, { file: 'dist/test/geomessage/transport.test.js' }],
  },
  {
    id: 'geomsg-dedup-removed',
    rule: 'rule 1: a message is delivered once (a retransmitted write is not applied twice)',
    what: 'the transport delivers a message again when a retransmitted copy arrives',
    edits: [{
      find: 'if (p.msgId < recv.deliveredBelow || recv.delivered.has(p.msgId)) { net.counters.duplicates++; return; }',
      replace: '',
    }],
    // wanem.test first: its duplicating link always shows a second delivery; transport.test only sometimes.
    tests: [{ file: 'dist/test/geomessage/wanem.test.js' }, { file: 'dist/test/geomessage/transport.test.js' }],
  },
];

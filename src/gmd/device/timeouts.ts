/**
 * The GMD's timeouts and sizes in one place, each with the reason for its value. Control requests
 * to the peer are small JSON messages: their timeouts bound how long an operator command (or a
 * start, a stop) can hang on a peer that does not answer, not how long the work takes.
 */

/**
 * How long start waits for a peer's hello before calling it unreachable (GmdOptions.helloTimeoutMs
 * overrides it). 5 s outlasts a few GeoMessage retransmissions on a slow WAN, yet keeps a start
 * with a dead peer short enough for an operator (or a cluster agent's start timeout).
 */
export const DEFAULT_HELLO_TIMEOUT_MS = 5000;

/** The shortest single hello attempt inside start's retry loop: below 100 ms even a healthy WAN peer could not answer. */
export const HELLO_ATTEMPT_MIN_MS = 100;

/**
 * Pause between hello attempts at start. GeoMessage refuses a peer it still holds as down at once,
 * until that peer's next keepalive gets through; 200 ms re-asks a few times per keepalive period
 * without flooding the link.
 */
export const HELLO_RETRY_MS = 200;

/** gmddown's check whether the peer is in fact AVAILABLE: short, since a down peer (the usual case) never answers. */
export const DOWN_PROBE_MS = 2000;

/** Asking a peer to stop its GMD ('down'): it replies before draining, so 5 s covers the round trip with room. */
export const STOP_PEER_MS = 5000;

/** Telling the peer we leave at stop: best effort (the peer also notices failed writes), so it must not hold up stop long. */
export const LEAVE_MS = 3000;

/**
 * How long stop waits for async writes still travelling to the peer. Their regions stay marked if
 * they never land, so waiting longer only delays the stop; 10 s lets a normal HWM's worth drain on a WAN.
 */
export const ASYNC_DRAIN_MS = 10000;

/** gmdclean's check that no peer is AVAILABLE: a peer that does not answer within 1.5 s is taken as not running. */
export const CLEAN_PROBE_MS = 1500;

/** An admin question to the peer (hello for peerInfo and unify): a reachable peer answers in one round trip. */
export const PEER_INFO_MS = 3000;

/** geo_verify facts: the peer gathers them (files, devices, configuration) before replying, so it gets longer. */
export const PEER_FACTS_MS = 10000;

/** State map transfers for unify (cells, or-map, clear-map): 1 byte per region, base64, plus a map write on the peer. */
export const MAP_TRANSFER_MS = 5000;

/** Control requests of a running resync (zero-runs, clean-regions, resync-done): the peer reads or updates its map first. */
export const RESYNC_CONTROL_MS = 10000;

/** Events kept for status (the newest), and how many of them status shows. */
export const EVENTS_KEPT = 50;
export const EVENTS_SHOWN = 10;

/** Idle write operations kept for reuse (more than the NBD layer lets be in flight per connection). */
export const WRITE_OP_POOL_MAX = 512;

/** Bytes of mirrored writes per GeoMessage batch (GEORM_GMD_BATCH_BYTES overrides, for measurements). */
export const BATCH_BYTES = Number(process.env.GEORM_GMD_BATCH_BYTES) || 512 * 1024;

/**
 * How often the clean gate flushes both volumes itself when the application does not (clean-gate.ts).
 * 30 s follows the kernel's own writeback age (vm.dirty_expire_centisecs = 3000), so the forced
 * flush mostly finds pages already written back; at 1 s a randomly rewritten volume was written back
 * every second and 4 KiB async writes lost about half their rate.
 */
export const CLEAN_FLUSH_MS = Number(process.env.GEORM_GMD_FLUSH_MS) || 30_000;

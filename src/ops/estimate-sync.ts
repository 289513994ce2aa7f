/**
 * estimate-sync (seed 3.8): how long a full initial sync, and the resync of a given stale amount,
 * take on a link. The seed assumes 80 % of the link; georm uses what `bench:gmd` measured for its
 * resync through a 1 Gbit/s tbf (units.ts GEOMESSAGE_EFFICIENCY: 90 % at MTU 1500, 96 % at 9000).
 *
 * The resync rate is the smallest of three limits:
 *   - the link:            bandwidth x efficiency
 *   - resync_rate_limit:   when set (bytes/s)
 *   - the round trip:      the resync keeps a window of chunks in flight (src/gmd/resync.ts: 8 MiB
 *                          worth of sync_rate-sized chunks, between 2 and 64 of them), so it cannot
 *                          move more than window / RTT per second.
 */

export interface SyncEstimateInput {
  /** Device size (full initial sync). */
  size: number;
  /** Stale bytes to resync (optional). */
  stale?: number;
  /** Raw link bandwidth, bytes per second. */
  bandwidth: number;
  rttMs: number;
  efficiency: number;
  /** resync_rate_limit in bytes per second, 0 = unlimited. */
  rateLimit: number;
  /** sync_rate (bytes per resync request) and region_size, which set the window. */
  syncRate: number;
  regionSize: number;
}

export interface SyncEstimate {
  rate: number;
  limitedBy: 'link' | 'resync_rate_limit' | 'rtt';
  linkRate: number;
  windowBytes: number;
  rttRate: number | null;
  fullSeconds: number;
  staleSeconds: number | null;
  /** The same sync without resync_rate_limit, to show what the limit costs. */
  fullSecondsUnlimited: number;
}

/** Bytes the resync keeps in flight (mirrors the window rule in src/gmd/resync.ts). */
export function resyncWindowBytes(syncRate: number, regionSize: number): number {
  const chunk = Math.max(syncRate, regionSize);
  const chunks = Math.max(2, Math.min(64, Math.floor((8 * 1024 * 1024) / chunk)));
  return chunks * chunk;
}

export function estimateSync(i: SyncEstimateInput): SyncEstimate {
  const linkRate = i.bandwidth * i.efficiency;
  const windowBytes = resyncWindowBytes(i.syncRate, i.regionSize);
  const rttRate = i.rttMs > 0 ? windowBytes / (i.rttMs / 1000) : null;
  const unlimited = Math.min(linkRate, rttRate ?? Infinity);
  let rate = unlimited;
  let limitedBy: SyncEstimate['limitedBy'] = rttRate !== null && rttRate < linkRate ? 'rtt' : 'link';
  if (i.rateLimit > 0 && i.rateLimit < rate) { rate = i.rateLimit; limitedBy = 'resync_rate_limit'; }
  // One round trip before the first chunk is acknowledged; negligible except for tiny amounts.
  const time = (bytes: number, r: number) => (bytes > 0 ? bytes / r + i.rttMs / 1000 : 0);
  return {
    rate, limitedBy, linkRate, windowBytes, rttRate,
    fullSeconds: time(i.size, rate),
    staleSeconds: i.stale === undefined ? null : time(i.stale, rate),
    fullSecondsUnlimited: time(i.size, unlimited),
  };
}

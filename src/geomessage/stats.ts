/**
 * GeoMessage statistics (the JSON behind `georm netstat` / `krpcstat`). Counters are cumulative since
 * the process started; the CLI computes per-interval rates from two snapshots.
 */

/** Per remote machine (the seed's "RPC statistics"). */
export interface MachineStats {
  machine: string;
  state: 'up' | 'down' | 'unknown';
  /** The peer's current epoch (incarnation), 0 when not yet known. */
  epoch: number;
  /** Network currently chosen for this peer. */
  network: string | null;
  /** Original messages sent (requests, one-way and replies; resends excluded). */
  rpcsOut: number;
  /** Messages received and delivered (duplicates excluded). */
  rpcsIn: number;
  bytesOut: number;
  bytesIn: number;
  /** Replies received to our requests. */
  replies: number;
  /** Messages that failed (peer down, timeout, peer restart). */
  failures: number;
  /** Sent messages that needed more than one fragment, and their fragment total. */
  fragmented: number;
  fragments: number;
  restarts: number;
}

/** One peer as seen on one network. */
export interface LinkStats {
  peer: string;
  up: boolean;
  srttMs: number | null;
  rttvarMs: number | null;
  rtoMs: number;
}

/** Why received packets were refused (never parsed past the check that failed). */
export interface DropStats {
  short: number;
  auth: number;
  version: number;
  malformed: number;
  replay: number;
  stale: number;
  unknownPeer: number;
}

/** Per local network (the seed's "network statistics"). */
export interface NetworkStats {
  network: string;
  local: string;
  /** How packets move on this network: 'dgram', or 'native' with '+gso' / '+gro' when the kernel batches. */
  io: string;
  mtu: number;
  packetsOut: number;
  packetsIn: number;
  bytesOut: number;
  bytesIn: number;
  /** Data packets sent again (after loss, timeout or reroute). */
  resends: number;
  /** Retransmission timer expiries. */
  timeouts: number;
  /** Packets given up on this network (send errors, moved away when the network failed). */
  failures: number;
  /** Times the socket buffer was full and packets waited for it to drain (native wire). */
  sendWaits: number;
  /** GSO messages the kernel refused on this network's socket (native wire; each sent again without GSO). */
  gsoRefusals: number;
  /** Times GSO came back after refusals (`io` shows '+gso' again). */
  gsoReenabled: number;
  /** Duplicate packets or fragments received. */
  duplicates: number;
  /** Control packets (pings, pongs, acks) sent and received. */
  other: number;
  dropped: DropStats;
  links: LinkStats[];
}

export interface GeoMessageStats {
  machine: string;
  epoch: number;
  /** Wall-clock time of the snapshot (ms since 1970). */
  time: number;
  uptimeMs: number;
  machines: MachineStats[];
  networks: NetworkStats[];
}

export function emptyDrops(): DropStats {
  return { short: 0, auth: 0, version: 0, malformed: 0, replay: 0, stale: 0, unknownPeer: 0 };
}

export function totalDrops(d: DropStats): number {
  return d.short + d.auth + d.version + d.malformed + d.replay + d.stale + d.unknownPeer;
}

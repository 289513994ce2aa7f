/**
 * The Prometheus view of one machine's GMDs, built with prom-client: at each scrape every metric is
 * cleared and filled again from a fresh probe (gmd-probe.ts), so a GMD that went away disappears
 * instead of lingering with its last values. The GMD keeps its counters itself (cumulative since its
 * process started); they are exported as counters, whose resets Prometheus's rate() handles.
 *
 * Naming: `georm_` prefix, base units (bytes, seconds), `_total` on counters; every series carries
 * the labels `gmd` and `machine`, per-peer ones `peer`, per-network ones `network`.
 */
import { Counter, Gauge, Registry } from 'prom-client';
import type { GmdProbe } from './gmd-probe.js';

type Labels = Record<string, string>;
type Metric = Gauge<string> | Counter<string>;

const GMD = ['gmd', 'machine'];
const STATES = ['DEFINED', 'STOPPED', 'STARTING', 'AVAILABLE'];

export class GeormMetrics {
  readonly registry = new Registry();
  private readonly all: Metric[] = [];

  private gauge(name: string, help: string, labelNames: string[] = GMD): Gauge<string> {
    const g = new Gauge({ name, help, labelNames, registers: [this.registry] });
    this.all.push(g);
    return g;
  }

  private counter(name: string, help: string, labelNames: string[] = GMD): Counter<string> {
    const c = new Counter({ name, help, labelNames, registers: [this.registry] });
    this.all.push(c);
    return c;
  }

  // ---- the GMD itself -------------------------------------------------------------------------
  readonly up = this.gauge('georm_gmd_up', '1 when the GMD process answered on its control socket, else 0');
  readonly info = this.gauge('georm_gmd_info', 'Always 1; role and mode of the GMD as labels', [...GMD, 'role', 'mode', 'minor']);
  readonly state = this.gauge('georm_gmd_state', '1 for the GMD\'s current state (DEFINED, STOPPED, STARTING, AVAILABLE), 0 for the others', [...GMD, 'state']);
  readonly size = this.gauge('georm_gmd_size_bytes', 'Size of the mirrored device');
  readonly regionSize = this.gauge('georm_gmd_region_size_bytes', 'Bytes one state-map region covers');
  readonly regions = this.gauge('georm_gmd_regions', 'State-map regions by cell state (clean, stale, inconsistent)', [...GMD, 'cell_state']);
  readonly staleBytes = this.gauge('georm_gmd_stale_bytes', 'Bytes in stale regions: data this machine has and its peer lacks (what a resync must send)');
  readonly inconsistentBytes = this.gauge('georm_gmd_inconsistent_bytes', 'Bytes in regions marked inconsistent (writes in flight, or interrupted by a crash)');
  readonly mapCrashed = this.gauge('georm_gmd_map_crashed', '1 when the state map was not closed cleanly (crash recovery pending)');
  readonly divergence = this.gauge('georm_gmd_divergence', '1 when both this machine\'s and the peer\'s state maps hold stale regions (data divergence: georm unify needed)', [...GMD, 'peer']);
  readonly peerActive = this.gauge('georm_gmd_peer_active', '1 when this peer is the active mirror target', [...GMD, 'peer', 'network']);
  readonly peerDownGiven = this.gauge('georm_gmd_peer_down_given', '1 when the peer was declared down (gmddown)', [...GMD, 'peer']);
  readonly hwm = this.gauge('georm_gmd_hwm_bytes', 'Async high water mark');
  readonly rateLimit = this.gauge('georm_gmd_resync_rate_limit_bytes_per_second', 'Resync rate limit, 0 = unlimited');
  readonly volumeErrors = this.gauge('georm_gmd_volume_errors', 'Volume errors (write, zero, flush) among the GMD\'s retained recent events');
  readonly lastVolumeError = this.gauge('georm_gmd_last_volume_error_timestamp_seconds', 'Time of the most recent retained volume error event');
  readonly errorEvents = this.gauge('georm_gmd_error_events', 'Error-level events among the GMD\'s retained recent events');

  // ---- resync ---------------------------------------------------------------------------------
  readonly resyncActive = this.gauge('georm_gmd_resync_active', '1 while a resync runs (direction push or pull)', [...GMD, 'peer', 'direction']);
  readonly resyncTotal = this.gauge('georm_gmd_resync_total_bytes', 'Bytes the running resync has to move in all', [...GMD, 'peer']);
  readonly resyncDone = this.gauge('georm_gmd_resync_done_bytes', 'Bytes the running resync has moved', [...GMD, 'peer']);
  readonly resyncLeft = this.gauge('georm_gmd_resync_left_bytes', 'Bytes the running resync still has to move', [...GMD, 'peer']);
  readonly resyncRate = this.gauge('georm_gmd_resync_rate_bytes_per_second', 'Recent resync rate', [...GMD, 'peer']);
  readonly resyncEta = this.gauge('georm_gmd_resync_eta_seconds', 'Estimated seconds until the running resync completes', [...GMD, 'peer']);

  // ---- I/O counters (GmdStats) ----------------------------------------------------------------
  private readonly statCounters: Array<[keyof import('../gmd/device/index.js').GmdStats, Counter<string>]> = [
    ['reads', this.counter('georm_gmd_reads_total', 'Application reads')],
    ['readBytes', this.counter('georm_gmd_read_bytes_total', 'Bytes read by the application')],
    ['localWrites', this.counter('georm_gmd_local_writes_total', 'Writes to the local volume')],
    ['localWriteBytes', this.counter('georm_gmd_local_write_bytes_total', 'Bytes written to the local volume')],
    ['remoteWrites', this.counter('georm_gmd_remote_writes_total', 'Writes mirrored to the peer')],
    ['remoteWriteBytes', this.counter('georm_gmd_remote_write_bytes_total', 'Bytes mirrored to the peer')],
    ['remoteFailures', this.counter('georm_gmd_remote_write_failures_total', 'Mirrored writes the peer did not acknowledge (the region was marked stale)')],
    ['incomingWrites', this.counter('georm_gmd_incoming_writes_total', 'Mirrored writes received from the peer')],
    ['incomingWriteBytes', this.counter('georm_gmd_incoming_write_bytes_total', 'Bytes of mirrored writes received from the peer')],
    ['resyncBytesSent', this.counter('georm_gmd_resync_sent_bytes_total', 'Bytes sent by resyncs')],
    ['resyncBytesReceived', this.counter('georm_gmd_resync_received_bytes_total', 'Bytes received by resyncs')],
    ['resyncRegions', this.counter('georm_gmd_resync_regions_total', 'Regions resynchronised')],
    ['staleMarkings', this.counter('georm_gmd_stale_markings_total', 'Times regions were marked stale')],
    ['hwmFallbacks', this.counter('georm_gmd_hwm_fallbacks_total', 'Async: times in-flight bytes went above the HWM and writes started to wait')],
    ['hwmWaits', this.counter('georm_gmd_hwm_waits_total', 'Async: writes that waited for admission below the HWM')],
    ['hwmCatchUps', this.counter('georm_gmd_hwm_catchups_total', 'Async: times the remote queue fell below the HWM again')],
    ['rejectedIo', this.counter('georm_gmd_rejected_io_total', 'Application I/O refused (secondary role, or not AVAILABLE)')],
  ];
  readonly asyncInflight = this.gauge('georm_gmd_async_inflight_bytes', 'Async: bytes written locally and not yet acknowledged by the peer');
  readonly asyncInflightMax = this.gauge('georm_gmd_async_inflight_max_bytes', 'Async: the most bytes ever in flight');
  readonly unflushedRegions = this.gauge('georm_gmd_unflushed_regions', 'Regions written on both sides waiting for a flush of both volumes before cleaning');

  // ---- GeoMessage, per peer --------------------------------------------------------------------
  private readonly PEER = [...GMD, 'peer'];
  readonly gmPeerUp = this.gauge('georm_geomessage_peer_up', '1 when GeoMessage sees the peer machine up', this.PEER);
  readonly gmPeerRestarts = this.counter('georm_geomessage_peer_restarts_total', 'Times the peer came back with a new epoch (it restarted)', this.PEER);
  private readonly peerCounters: Array<[keyof import('../geomessage/stats.js').MachineStats, Counter<string>]> = [
    ['rpcsOut', this.counter('georm_geomessage_messages_sent_total', 'Messages sent to the peer (resends excluded)', this.PEER)],
    ['rpcsIn', this.counter('georm_geomessage_messages_received_total', 'Messages received from the peer (duplicates excluded)', this.PEER)],
    ['bytesOut', this.counter('georm_geomessage_peer_sent_bytes_total', 'Message bytes sent to the peer', this.PEER)],
    ['bytesIn', this.counter('georm_geomessage_peer_received_bytes_total', 'Message bytes received from the peer', this.PEER)],
    ['replies', this.counter('georm_geomessage_replies_total', 'Replies received to requests sent to the peer', this.PEER)],
    ['failures', this.counter('georm_geomessage_message_failures_total', 'Messages to the peer that failed (peer down, timeout, restart)', this.PEER)],
  ];

  // ---- GeoMessage, per network and per link ----------------------------------------------------
  private readonly NET = [...GMD, 'network'];
  private readonly LINK = [...GMD, 'network', 'peer'];
  readonly linkUp = this.gauge('georm_geomessage_link_up', '1 when the peer answers on this network', this.LINK);
  readonly linkSrtt = this.gauge('georm_geomessage_link_srtt_seconds', 'Smoothed round-trip time to the peer on this network', this.LINK);
  readonly linkRttvar = this.gauge('georm_geomessage_link_rttvar_seconds', 'Round-trip time variation to the peer on this network', this.LINK);
  readonly linkRto = this.gauge('georm_geomessage_link_rto_seconds', 'Current retransmission timeout to the peer on this network', this.LINK);
  readonly netMtu = this.gauge('georm_geomessage_network_mtu_bytes', 'MTU GeoMessage uses on this network', this.NET);
  readonly refused = this.counter('georm_geomessage_refused_packets_total', 'Received packets refused, by reason (short, auth, version, malformed, replay, stale, unknown_peer)', [...this.NET, 'reason']);
  private readonly netCounters: Array<[keyof import('../geomessage/stats.js').NetworkStats, Counter<string>]> = [
    ['packetsOut', this.counter('georm_geomessage_packets_sent_total', 'Packets sent on this network', this.NET)],
    ['packetsIn', this.counter('georm_geomessage_packets_received_total', 'Packets received on this network', this.NET)],
    ['bytesOut', this.counter('georm_geomessage_network_sent_bytes_total', 'Bytes sent on this network', this.NET)],
    ['bytesIn', this.counter('georm_geomessage_network_received_bytes_total', 'Bytes received on this network', this.NET)],
    ['resends', this.counter('georm_geomessage_resends_total', 'Data packets sent again (loss, timeout, reroute)', this.NET)],
    ['timeouts', this.counter('georm_geomessage_timeouts_total', 'Retransmission timer expiries', this.NET)],
    ['failures', this.counter('georm_geomessage_network_failures_total', 'Packets given up on this network', this.NET)],
    ['sendWaits', this.counter('georm_geomessage_send_waits_total', 'Times the socket buffer was full and packets waited', this.NET)],
    ['duplicates', this.counter('georm_geomessage_duplicates_total', 'Duplicate packets or fragments received', this.NET)],
  ];

  readonly scrapeDuration = this.gauge('georm_metrics_probe_duration_seconds', 'How long asking all local GMDs took at this scrape', []);
  readonly gmdsFound = this.gauge('georm_metrics_gmds', 'Control sockets found in the run directory', []);

  /** Replaces every value by what the probes say; `machine` labels GMDs that did not say theirs. */
  update(probes: GmdProbe[], probeSeconds: number, machine: string): void {
    for (const m of this.all) m.reset();
    this.scrapeDuration.set(probeSeconds);
    this.gmdsFound.set(probes.length);
    for (const p of probes) this.updateOne(p, machine);
  }

  private updateOne(p: GmdProbe, machine: string): void {
    this.up.set({ gmd: p.gmd, machine: p.status?.machine ?? machine }, p.up ? 1 : 0);
    const s = p.status;
    if (!p.up || !s) return;
    const g: Labels = { gmd: p.gmd, machine: s.machine };
    this.info.set({ ...g, role: s.role ?? 'none', mode: s.mode ?? 'unknown', minor: String(s.minor) }, 1);
    for (const st of STATES) this.state.set({ ...g, state: st }, s.state === st ? 1 : 0);
    this.size.set(g, s.size);
    const regionSize = s.attrs?.regionSize ?? 0;
    if (s.attrs) {
      this.regionSize.set(g, regionSize);
      this.hwm.set(g, s.attrs.hwm);
      this.rateLimit.set(g, s.attrs.resyncRateLimit);
    }
    if (s.map) {
      this.regions.set({ ...g, cell_state: 'clean' }, s.map.clean);
      this.regions.set({ ...g, cell_state: 'stale' }, s.map.stale);
      this.regions.set({ ...g, cell_state: 'inconsistent' }, s.map.inconsistent);
      // A map's last region may be shorter than regionSize; the device size caps the product.
      this.staleBytes.set(g, Math.min(s.size, s.map.stale * regionSize));
      this.inconsistentBytes.set(g, Math.min(s.size, s.map.inconsistent * regionSize));
      this.mapCrashed.set(g, s.map.crashed ? 1 : 0);
    }
    for (const [peer, diverged] of Object.entries(p.divergence ?? {})) if (diverged !== null) this.divergence.set({ ...g, peer }, diverged ? 1 : 0);
    for (const peer of s.peers) {
      if (!(peer.machine in (p.divergence ?? {})) && s.map) this.divergence.set({ ...g, peer: peer.machine }, 0);
      this.peerActive.set({ ...g, peer: peer.machine, network: peer.link }, peer.active ? 1 : 0);
      this.peerDownGiven.set({ ...g, peer: peer.machine }, peer.downGiven ? 1 : 0);
    }
    const volumeErrors = s.events.filter((e) => e.level === 'error' && /volume/.test(e.message));
    this.volumeErrors.set(g, volumeErrors.length);
    if (volumeErrors.length) this.lastVolumeError.set(g, Date.parse(volumeErrors[volumeErrors.length - 1]!.time) / 1000);
    this.errorEvents.set(g, s.events.filter((e) => e.level === 'error').length);

    const r = s.resync;
    if (r && !r.complete) {
      const rl = { ...g, peer: r.peer };
      this.resyncActive.set({ ...rl, direction: r.direction }, 1);
      this.resyncTotal.set(rl, r.totalBytes);
      this.resyncDone.set(rl, r.doneBytes);
      this.resyncLeft.set(rl, r.leftBytes);
      this.resyncRate.set(rl, r.rateBps);
      if (r.etaSec !== null) this.resyncEta.set(rl, r.etaSec);
    }
    for (const [key, c] of this.statCounters) c.inc(g, s.stats[key]);
    this.asyncInflight.set(g, s.stats.asyncInflightBytes);
    this.asyncInflightMax.set(g, s.stats.asyncInflightMax);
    this.unflushedRegions.set(g, s.stats.unflushedRegions);

    const n = p.net;
    if (!n) return;
    for (const m of n.machines) {
      const pl = { ...g, peer: m.machine };
      this.gmPeerUp.set(pl, m.state === 'up' ? 1 : 0);
      this.gmPeerRestarts.inc(pl, m.restarts);
      for (const [key, c] of this.peerCounters) c.inc(pl, m[key] as number);
    }
    for (const net of n.networks) {
      const nl = { ...g, network: net.network };
      this.netMtu.set(nl, net.mtu);
      for (const [key, c] of this.netCounters) c.inc(nl, net[key] as number);
      for (const [reason, count] of Object.entries(net.dropped)) {
        this.refused.inc({ ...nl, reason: reason.replace(/[A-Z]/g, (ch) => `_${ch.toLowerCase()}`) }, count);
      }
      for (const l of net.links) {
        const ll = { ...nl, peer: l.peer };
        this.linkUp.set(ll, l.up ? 1 : 0);
        if (l.srttMs !== null) this.linkSrtt.set(ll, l.srttMs / 1000);
        if (l.rttvarMs !== null) this.linkRttvar.set(ll, l.rttvarMs / 1000);
        this.linkRto.set(ll, l.rtoMs / 1000);
      }
    }
  }
}

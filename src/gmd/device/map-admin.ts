/**
 * The operator's commands on state maps (gmddirty, gmdclean, unify, local takeover) and the
 * questions they ask the peer (hello, facts, cells). Each checks the GMD's state before it changes a map.
 */

import { GeormError } from '../../util/errors.js';
import { CELL_CLEAN, CELL_STALE } from '../../statemap/index.js';
import type { MapPort } from '../ports.js';
import type { PeerInfo } from '../protocol.js';
import type { DeviceContext } from './context.js';
import { CLEAN_PROBE_MS, MAP_TRANSFER_MS, PEER_FACTS_MS, PEER_INFO_MS } from './timeouts.js';

export class MapAdmin {
  constructor(private readonly ctx: DeviceContext) {}

  /** gmddirty: every region stale (the whole volume travels at the next resync). */
  async dirty(): Promise<void> {
    await this.ctx.needStoppedMap('gmddirty').map.setAll(CELL_STALE);
    this.ctx.event('warn', 'state map dirtied (all regions stale)');
  }

  /** gmdclean: every region clean; refused while a peer is AVAILABLE. */
  async clean(): Promise<void> {
    const ctx = this.ctx;
    const res = ctx.needStoppedMap('gmdclean');
    for (const p of ctx.peers) {
      const info = await ctx.control(p, { op: 'hello', from: ctx.info() }, CLEAN_PROBE_MS).catch(() => null) as PeerInfo | null;
      if (info?.state === 'AVAILABLE') throw new GeormError('GMD_ERR_STATE', `can't clean ${ctx.name}: remote GMD on ${p} is AVAILABLE`);
    }
    await res.map.setAll(CELL_CLEAN);
    ctx.event('warn', 'state map cleaned (all regions consistent)');
  }

  /** Cells of this machine's map (1 byte per region). */
  cells(): Uint8Array { return this.ctx.needMap().map.cells(); }

  /** What a peer says about itself (hello). */
  peerInfo(peer: string): Promise<PeerInfo> {
    return this.ctx.control(peer, { op: 'hello', from: this.ctx.info() }, PEER_INFO_MS) as Promise<PeerInfo>;
  }

  /** A peer's geo_verify facts. */
  peerFacts(peer: string): Promise<unknown> { return this.ctx.control(peer, { op: 'facts' }, PEER_FACTS_MS); }

  /** Fetches a peer's map cells over GeoMessage. */
  async peerCells(peer: string): Promise<Uint8Array> {
    const r = await this.ctx.control(peer, { op: 'cells' }, MAP_TRANSFER_MS) as { cells: string };
    return new Uint8Array(Buffer.from(r.cells, 'base64'));
  }

  /** Unify: master := OR of both maps, the other cleared. With preview, returns the unified cells only. */
  async unify(master: string, preview: boolean): Promise<{ unified: Uint8Array; cleared: string | null }> {
    const ctx = this.ctx;
    const res = ctx.needMap();
    const peer = ctx.peers.find((p) => p !== ctx.machine && (master === ctx.machine || p === master)) ?? null;
    if (master !== ctx.machine && !ctx.peers.includes(master)) throw new GeormError('GMD_ERR_PEER', `unify: ${master} is neither this machine (${ctx.machine}) nor a remote peer of ${ctx.name}`);
    if (!peer) throw new GeormError('GMD_ERR_PEER', 'unify: no remote peer');
    const local = res.map.cells();
    const remote = await this.peerCells(peer);
    if (remote.length !== local.length) throw new GeormError('GMD_ERR_MISMATCH', `unify: the state maps have different sizes (${local.length} vs ${remote.length} regions)`);
    const unified = new Uint8Array(local.length);
    for (let i = 0; i < local.length; i++) unified[i] = local[i]! | remote[i]!;
    if (preview) return { unified, cleared: null };
    if (ctx.state === 'AVAILABLE') throw new GeormError('GMD_ERR_STATE', `unify: stop ${ctx.name} on ${ctx.machine} first`);
    const info = await ctx.control(peer, { op: 'hello', from: ctx.info() }, PEER_INFO_MS) as PeerInfo;
    if (info.state === 'AVAILABLE') throw new GeormError('GMD_ERR_STATE', `unify: stop ${ctx.name} on ${peer} first`);
    if (master === ctx.machine) {
      await res.map.orWith(remote);
      await ctx.control(peer, { op: 'clear-map' }, MAP_TRANSFER_MS);
      ctx.event('warn', `unify: master ${master}; state map of ${peer} cleared`);
      return { unified, cleared: peer };
    }
    await ctx.control(peer, { op: 'or-map', cells: Buffer.from(local).toString('base64') }, MAP_TRANSFER_MS);
    await res.map.setAll(CELL_CLEAN);
    ctx.event('warn', `unify: master ${master}; state map of ${ctx.machine} cleared`);
    return { unified, cleared: ctx.machine };
  }

  /** Local takeover (seed §2.2): OR another machine's map into ours, then clean it. */
  async takeover(other: MapPort): Promise<void> {
    const res = this.ctx.needStoppedMap('takeover');
    await res.map.orWith(other.cells());
    await other.setAll(CELL_CLEAN);
    await res.map.flush();
    this.ctx.event('warn', 'local takeover: merged the failed machine\'s state map and cleaned it');
  }
}

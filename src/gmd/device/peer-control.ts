/**
 * The receiving side of the peer's control requests (SVC_CONTROL, small JSON messages): hello and
 * join, leave and down, the map operations of unify and resync, geo_verify facts and zero runs.
 */

import { GeormError } from '../../util/errors.js';
import { CELL_CLEAN } from '../../statemap/index.js';
import type { NetMessage } from '../ports.js';
import { SVC_CONTROL, type ControlMessage } from '../protocol.js';
import { sourceRuns } from '../zero-runs.js';
import type { DeviceContext } from './context.js';
import type { PeerMembership } from './membership.js';

export class PeerControl {
  /** `stop` is the device's stop (a peer's 'down' stops this GMD). */
  constructor(private readonly ctx: DeviceContext, private readonly membership: PeerMembership,
    private readonly stop: (reason: string) => Promise<void>) {}

  register(): void {
    this.ctx.net.handle(SVC_CONTROL, (m) => this.onControl(m));
  }

  private async onControl(m: NetMessage): Promise<Buffer> {
    const ctx = this.ctx;
    let msg: ControlMessage;
    try { msg = JSON.parse(m.payload.toString('utf8')) as ControlMessage; } catch { throw new GeormError('GMD_ERR_BAD_MESSAGE', 'malformed control message'); }
    if (!msg || typeof msg !== 'object' || typeof msg.op !== 'string') throw new GeormError('GMD_ERR_BAD_MESSAGE', 'malformed control message');
    const reply = (v: unknown) => Buffer.from(JSON.stringify(v));
    switch (msg.op) {
      case 'hello':
        return reply(ctx.info());
      case 'join': {
        if (ctx.state !== 'AVAILABLE') throw new GeormError('GMD_ERR_NOT_AVAILABLE', `${ctx.name} on ${ctx.machine} is ${ctx.state}`);
        const from = msg.from;
        if (!from || typeof from !== 'object') throw new GeormError('GMD_ERR_BAD_MESSAGE', 'malformed join');
        if (from.mode !== ctx.res!.attrs.mode || from.size !== ctx.devSize || from.minor !== ctx.minor) {
          throw new GeormError('GMD_ERR_MISMATCH', `${m.peer}'s definition of ${ctx.name} differs from ${ctx.machine}'s`);
        }
        if (from.role === 'primary' && ctx.res!.attrs.role === 'primary') throw new GeormError('GMD_ERR_BOTH_PRIMARY', 'both sides are primary');
        this.membership.attachPeer(m.peer, from);
        return reply(ctx.info());
      }
      case 'leave':
        this.membership.dropPeer(m.peer, `${m.peer} stopped its GMD`);
        return reply({ ok: true });
      case 'down':
        if (ctx.state === 'AVAILABLE') {
          ctx.event('warn', `stopping: ${m.peer} declared this GMD down (${msg.reason}); protection against data divergence`);
          // Reply first, then stop, so the peer's request does not wait for our drain.
          setImmediate(() => { void this.stop('gmddown from peer'); });
        }
        return reply({ ok: true });
      case 'cells':
        return reply({ cells: Buffer.from(ctx.needMap().map.cells()).toString('base64') });
      case 'or-map':
        await ctx.needStoppedMap('unify').map.orWith(new Uint8Array(Buffer.from(msg.cells, 'base64')));
        ctx.event('warn', `unify: this machine is master; ${m.peer}'s state map ORed in`);
        return reply({ ok: true });
      case 'clear-map':
        await ctx.needStoppedMap('unify').map.setAll(CELL_CLEAN);
        ctx.event('warn', `unify: state map cleared (master is ${m.peer})`);
        return reply({ ok: true });
      case 'clean-regions': {
        const map = ctx.needMap().map;
        // Only the peer resyncing with us may clear staleness: from anyone else it would lose the
        // record of what that peer lacks (DESIGN §4 rules 1 and 3). All regions checked before any is cleaned.
        if (!ctx.mirrorsWith(m.peer)) throw new GeormError('GMD_ERR_NOT_AVAILABLE', `${m.peer} is not the active peer of ${ctx.name}`);
        const regions: unknown = msg.regions;
        const n = map.regionCount;
        if (!Array.isArray(regions) || !regions.every((r) => Number.isInteger(r) && (r as number) >= 0 && (r as number) < n)) {
          throw new GeormError('GMD_ERR_BAD_MESSAGE', 'malformed clean-regions');
        }
        for (const r of regions as number[]) map.cleanRegion(r);
        return reply({ ok: true });
      }
      case 'facts':
        if (!ctx.facts) throw new GeormError('GMD_ERR_BAD_MESSAGE', 'verify not supported');
        return reply(await ctx.facts());
      case 'resync-done':
        await ctx.res?.map.flush();
        return reply({ ok: true });
      case 'zero-runs': {
        // A pulling peer asks how a range that read as zeros is stored here (Resync.pullZeros).
        const { offset, length } = msg;
        if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length <= 0 || offset + length > ctx.devSize) {
          throw new GeormError('GMD_ERR_BAD_MESSAGE', 'malformed zero-runs');
        }
        return reply({ runs: await sourceRuns(ctx.configuredRes().local, offset, length) });
      }
      default:
        throw new GeormError('GMD_ERR_BAD_MESSAGE', 'unknown control operation');
    }
  }
}

/**
 * The GMD's state transitions (DESIGN §4, the seed's DEFINED / STOPPED / STARTING / AVAILABLE):
 * configure and unconfigure, attribute changes, gmddown, start (asks the peers, decides with
 * start-rules.ts, then joins one) and stop (refuses new I/O, drains, tells the peer it leaves).
 */

import { GeormError } from '../../util/errors.js';
import type { CleanGate } from '../clean-gate.js';
import type { PeerInfo } from '../protocol.js';
import { checkAttributes } from './attributes.js';
import type { DeviceContext } from './context.js';
import type { HwmAdmission } from './hwm.js';
import type { PeerMembership } from './membership.js';
import { decideStart, isStartRefusal, startRefusalError, type StartRefusal } from './start-rules.js';
import {
  ASYNC_DRAIN_MS, DOWN_PROBE_MS, HELLO_ATTEMPT_MIN_MS, HELLO_RETRY_MS, LEAVE_MS, STOP_PEER_MS,
} from './timeouts.js';
import type { GmdAttributes, GmdResources } from './types.js';

export class Lifecycle {
  private attrOverrides: Partial<GmdAttributes> = {};
  /** The stop() under way: a second caller (stopgmd during a peer's gmddown) waits for the same one. */
  private stopInProgress: Promise<void> | null = null;

  constructor(private readonly ctx: DeviceContext, private readonly membership: PeerMembership,
    private readonly hwm: HwmAdmission, private readonly gate: CleanGate,
    private readonly openRes: () => Promise<GmdResources>, private readonly helloTimeoutMs: number) {}

  /** DEFINED -> STOPPED: open the volume and state map. */
  async configure(): Promise<void> {
    const ctx = this.ctx;
    if (ctx.state !== 'DEFINED') return;
    const res = await this.openRes();
    res.attrs = { ...res.attrs, ...this.attrOverrides };
    if (res.attrs.mode === 'async' && res.attrs.role === 'none') {
      // Either side may write under role none: in async that lets both sides write (DESIGN §4 rule 6).
      await res.map.close();
      await res.local.close?.();
      throw new GeormError('GMD_ERR_BAD_REQUEST', `${ctx.name}: an async GMD needs role primary or secondary, not none (change the role or the mode with set, in DEFINED state)`);
    }
    ctx.setResources(res);
    ctx.devSize = res.local.size();
    ctx.state = 'STOPPED';
    if (res.map.crashed) ctx.event('warn', `state map was not closed cleanly; ${res.map.counts().inconsistent} region(s) in flight at the crash will be resynchronised`);
    ctx.event('info', `configured (STOPPED): mode ${res.attrs.mode}, role ${res.attrs.role}, size ${ctx.devSize}`);
  }

  /** STOPPED -> DEFINED. */
  async unconfigure(): Promise<void> {
    const ctx = this.ctx;
    if (ctx.state === 'AVAILABLE') throw new GeormError('GMD_ERR_STATE', `${ctx.name} is AVAILABLE: stop it first (stopgmd)`);
    if (ctx.state === 'DEFINED') return;
    const res = ctx.res!;
    ctx.setResources(null);
    ctx.state = 'DEFINED';
    await res.map.close();
    await res.local.close?.();
    ctx.event('info', 'unconfigured (DEFINED)');
  }

  /** Attributes change only in DEFINED (seed §2.1.1); they apply at the next configure. */
  setAttributes(a: Partial<GmdAttributes>): void {
    const ctx = this.ctx;
    if (ctx.state !== 'DEFINED') {
      throw new GeormError('GMD_ERR_STATE', `attributes of ${ctx.name} can only be changed in the DEFINED state (now ${ctx.state}); run ucfggmd first`);
    }
    this.attrOverrides = { ...this.attrOverrides, ...checkAttributes(a) };
  }

  /** gmddown: the peer is down. On a STOPPED GMD it allows start without it; a peer that is in fact
   * AVAILABLE is told to stop (protection against divergence). */
  async down(peer: string): Promise<{ stoppedRemote: boolean }> {
    const ctx = this.ctx;
    if (!ctx.peers.includes(peer)) throw new GeormError('GMD_ERR_PEER', `${peer} is not a remote peer of ${ctx.name} (peers: ${ctx.peers.join(', ')})`);
    ctx.downGiven.add(peer);
    if (ctx.activePeer === peer) this.membership.dropPeer(peer, 'gmddown');
    let stoppedRemote = false;
    try {
      const info = await ctx.control(peer, { op: 'hello', from: ctx.info() }, DOWN_PROBE_MS) as PeerInfo;
      if (info.state === 'AVAILABLE') {
        await ctx.control(peer, { op: 'down', reason: `gmddown issued on ${ctx.machine}` }, STOP_PEER_MS);
        stoppedRemote = true;
        ctx.event('warn', `gmddown ${peer}: the remote GMD was AVAILABLE and has been stopped to protect against divergence`);
      }
    } catch { /* unreachable: that is what gmddown is for */ }
    ctx.event('info', `gmddown ${peer}`);
    return { stoppedRemote };
  }

  /** STOPPED -> AVAILABLE, applying the start rules of DESIGN §4 item 4 (start-rules.ts). */
  async start(): Promise<{ message: string; peer: string | null }> {
    const ctx = this.ctx;
    if (ctx.state === 'AVAILABLE') return { message: `${ctx.name} is already AVAILABLE`, peer: ctx.activePeer };
    if (ctx.state === 'DEFINED') await this.configure();
    if (ctx.state !== 'STOPPED') throw new GeormError('GMD_ERR_STATE', `${ctx.name} is ${ctx.state}`);
    const res = ctx.res!;
    const refuse = (r: StartRefusal) => startRefusalError(ctx.name, ctx.machine, r);
    ctx.state = 'STARTING';
    try {
      const localDirty = !res.map.isClean();
      const { infos, unreachable } = await this.helloAll();
      const counts = res.map.counts();
      const decision = decideStart({
        minor: ctx.minor, size: ctx.devSize, mode: res.attrs.mode, role: res.attrs.role,
        localDirty, dirtyRegions: counts.stale + counts.inconsistent,
        peers: ctx.peers, infos, unreachable, downGiven: ctx.downGiven,
      });
      if (decision.refusal) throw refuse(decision.refusal);
      const peer = decision.peer;
      if (peer && decision.stopPeerFirst) {
        const r = await ctx.control(peer, { op: 'down', reason: `started on ${ctx.machine} with gmddown` }, STOP_PEER_MS).catch((e: unknown) => e as Error);
        if (r instanceof Error) throw refuse({ rule: 'PEER_NOT_STOPPED', peer, reason: r.message });
        ctx.event('warn', `remote peer ${peer} was AVAILABLE although gmddown was given; it has been stopped`);
        this.becomeAvailable();
        ctx.event('info', `started without remote peers (stale marking)`);
        return { message: `${ctx.name} started successfully; ${peer} was stopped (gmddown)`, peer: null };
      }
      this.becomeAvailable();
      if (!peer) {
        ctx.event('info', 'started without remote peers (stale marking)');
        return { message: `No remote peers currently available for ${ctx.name}.\n${ctx.name} started successfully.`, peer: null };
      }
      ctx.joiningPeer = peer;
      const reply = await ctx.control(peer, { op: 'join', from: ctx.info() }, this.helloTimeoutMs).catch((e: unknown) => e as Error)
        .finally(() => { ctx.joiningPeer = null; });
      if (reply instanceof Error) {
        ctx.state = 'STOPPED';
        throw refuse({ rule: 'JOIN_FAILED', peer, reason: reply.message });
      }
      this.membership.attachPeer(peer, reply as PeerInfo);
      return { message: `${ctx.name} started successfully, mirroring to ${peer}.`, peer };
    } catch (e) {
      if (ctx.state === 'STARTING') ctx.state = 'STOPPED';
      if (isStartRefusal(e)) ctx.event('warn', e.message);
      throw e;
    }
  }

  private becomeAvailable(): void {
    this.ctx.state = 'AVAILABLE';
    this.ctx.stopping = false;
  }

  /**
   * Asks every peer about itself. A peer GeoMessage still holds for down (after a Promote Failure
   * Timeout) is refused at once until its next keepalive gets through: keep asking until the hello timeout.
   */
  private async helloAll(): Promise<{ infos: Map<string, PeerInfo>; unreachable: string[] }> {
    const ctx = this.ctx;
    const infos = new Map<string, PeerInfo>();
    const unreachable: string[] = [];
    await Promise.all(ctx.peers.map(async (p) => {
      const deadline = Date.now() + this.helloTimeoutMs;
      for (;;) {
        try {
          infos.set(p, await ctx.control(p, { op: 'hello', from: ctx.info() }, Math.max(HELLO_ATTEMPT_MIN_MS, deadline - Date.now())) as PeerInfo);
          break;
        } catch {
          if (Date.now() + HELLO_RETRY_MS >= deadline) { unreachable.push(p); break; }
          await new Promise((r) => setTimeout(r, HELLO_RETRY_MS));
        }
      }
    }));
    return { infos, unreachable };
  }

  /** AVAILABLE -> STOPPED: refuse new I/O (the application's and the peer's), drain, tell the peer we leave. */
  stop(reason = 'stopgmd'): Promise<void> {
    if (this.stopInProgress) return this.stopInProgress;
    if (this.ctx.state !== 'AVAILABLE') return Promise.resolve();
    this.stopInProgress = this.drainAndStop(reason).finally(() => { this.stopInProgress = null; });
    return this.stopInProgress;
  }

  private async drainAndStop(reason: string): Promise<void> {
    const ctx = this.ctx;
    ctx.stopping = true;
    await this.membership.resync?.stop();
    await ctx.ioIdle();
    await this.hwm.waitDrained(ASYNC_DRAIN_MS);
    await this.gate.drain();
    const peer = ctx.activePeer;
    ctx.setActivePeer(null, null);
    if (peer) await ctx.control(peer, { op: 'leave' }, LEAVE_MS).catch(() => undefined);
    ctx.state = 'STOPPED';
    await ctx.res!.map.flush();
    ctx.event('info', `stopped (${reason})`);
  }
}

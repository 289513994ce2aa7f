/**
 * Congestion window of one peer session: how many data packets may be in flight to it.
 *
 * The window reacts to queueing delay, not to random loss: a WAN with 1–10% loss must still be
 * filled. Once per smoothed RTT it looks at the smallest RTT sample of the interval just ended and
 * compares it with the path's minimum RTT:
 *   - the excess is above the target max(queueTargetMs, minimum RTT), or more than 20% of the
 *     interval's packets were lost (at least 20 sent: a tail-drop bottleneck) → shrink to 80%
 *     (never below 16 packets);
 *   - the excess is below half the target → grow by half (start-up);
 *   - otherwise → grow by 1/8 (at least one packet).
 * Growth stops at the maximum. Retransmission timer expiries are reported separately: a link that
 * timed out twice in a row halves the window (never below 32 packets).
 *
 * Nothing here reads a clock: every event takes `now` (ms, the caller's monotonic clock), so the unit
 * tests drive it with a fake one. No allocation per event.
 */
import type { Logger } from '../util/log.js';

/** Packets in flight before the first RTT measurements let the window grow. */
export const INITIAL_WINDOW = 64;
/** The window never shrinks below this on queueing delay or heavy loss. */
const SHRINK_FLOOR = 16;
/** The window never halves below this on repeated timeouts. */
const TIMEOUT_FLOOR = 32;
/** A path's minimum RTT is forgotten after this long, so a route change to a longer path is learned. */
const MIN_RTT_LIFETIME_MS = 10_000;
/** Interval loss share above which the window shrinks, and the sample size it needs. */
const HEAVY_LOSS_SHARE = 0.2;
const HEAVY_LOSS_MIN_SENT = 20;

/** The smallest RTT sample seen on one path (one network to one peer), renewed every 10 s. */
export class PathMinRtt {
  ms = Infinity;
  /** When `ms` was taken. */
  at = 0;

  update(sampleMs: number, now: number): void {
    if (sampleMs < this.ms || now - this.at > MIN_RTT_LIFETIME_MS) { this.ms = sampleMs; this.at = now; }
  }
}

export interface CongestionWindowOptions {
  /** Upper bound of the window (packets). */
  maxPackets: number;
  /** Starting window (packets); default min(maxPackets, INITIAL_WINDOW). */
  initialPackets?: number;
  /** Standing queueing delay tolerated before shrinking: max(queueTargetMs, minimum RTT). */
  queueTargetMs: number;
  /** For the per-adjustment trace line. */
  log?: Logger;
  peer?: string;
}

export class CongestionWindow {
  /** Packets that may be in flight now. */
  limit: number;
  readonly max: number;
  private readonly queueTarget: number;
  private readonly log: Logger | null;
  private readonly peer: string;
  private nextAdjustAt = 0;
  private intervalSent = 0;
  private intervalLost = 0;
  private intervalMinRtt = Infinity;

  constructor(o: CongestionWindowOptions) {
    this.max = o.maxPackets;
    this.limit = Math.min(o.initialPackets ?? INITIAL_WINDOW, INITIAL_WINDOW, o.maxPackets);
    this.queueTarget = o.queueTargetMs;
    this.log = o.log ?? null;
    this.peer = o.peer ?? '';
  }

  /** A data packet (first transmission or resend) left. */
  onSent(): void { this.intervalSent++; }

  /** A packet was declared lost (fast retransmit or timer). */
  onLost(): void { this.intervalLost++; }

  /**
   * An ack gave an RTT sample for the newest packet it acknowledged. `pathMinRtt` is the path's
   * minimum including this sample, `srtt` its smoothed RTT (the adjustment period); `inFlight` is
   * only traced.
   */
  onAck(sampleMs: number, pathMinRtt: number, srtt: number, now: number, inFlight: number): void {
    if (sampleMs < this.intervalMinRtt) this.intervalMinRtt = sampleMs;
    if (now < this.nextAdjustAt) return;
    this.nextAdjustAt = now + Math.max(1, srtt);
    // The smallest sample of the interval shows a standing queue; scheduling hiccups only add spikes.
    const queueing = this.intervalMinRtt - pathMinRtt;
    this.intervalMinRtt = Infinity;
    const target = Math.max(this.queueTarget, pathMinRtt);
    const lossy = this.intervalSent >= HEAVY_LOSS_MIN_SENT && this.intervalLost > HEAVY_LOSS_SHARE * this.intervalSent;
    if (this.log?.isLevelEnabled('trace')) {
      this.log.trace({ peer: this.peer, cwnd: this.limit, srtt, minRtt: pathMinRtt, sent: this.intervalSent, lost: this.intervalLost, inflight: inFlight }, 'window');
    }
    this.intervalSent = this.intervalLost = 0;
    if (queueing > target || lossy) this.limit = Math.max(SHRINK_FLOOR, Math.floor(this.limit * 0.8));
    else if (queueing < target / 2) this.limit = Math.min(this.max, Math.ceil(this.limit * 1.5));
    else this.limit = Math.min(this.max, this.limit + Math.max(1, this.limit >> 3));
  }

  /**
   * The retransmission timer expired; `consecutiveTimeouts` is the highest count of expiries in a row
   * among the links it hit. One expiry is usually a random loss; repeated ones without any ack mean
   * the path is congested or failing.
   */
  onRtoExpired(consecutiveTimeouts: number): void {
    if (consecutiveTimeouts >= 2) this.limit = Math.max(TIMEOUT_FLOOR, this.limit >> 1);
  }

  /** The peer restarted: start over from the initial window (interval counters carry on). */
  restart(): void {
    this.limit = Math.min(this.max, INITIAL_WINDOW);
  }
}

/**
 * Retransmission timeout per RFC 6298: SRTT and RTTVAR smoothed with alpha 1/8 and beta 1/4,
 * RTO = SRTT + max(G, 4·RTTVAR, SRTT/2), clamped to [minMs, maxMs]; doubled on each timeout (backoff) and
 * reset by the next valid sample. Samples never mix retransmissions: every transmission has its own
 * packet number, so Karn's ambiguity does not arise.
 */
export class RttEstimator {
  srtt = 0;
  rttvar = 0;
  samples = 0;
  private backoff = 1;

  constructor(private readonly minMs: number, private readonly maxMs: number, private readonly initialMs = 1000) {}

  sample(ms: number): void {
    if (!(ms >= 0)) return;
    if (this.samples === 0) {
      this.srtt = ms;
      this.rttvar = ms / 2;
    } else {
      this.rttvar = 0.75 * this.rttvar + 0.25 * Math.abs(this.srtt - ms);
      this.srtt = 0.875 * this.srtt + 0.125 * ms;
    }
    this.samples++;
    this.backoff = 1;
  }

  /** Current RTO in ms, including backoff. */
  get rto(): number {
    // The variance term has a floor of half the SRTT: on a steady WAN path RTTVAR shrinks to almost
    // nothing and the timer would otherwise race the fast retransmit that needs about one RTT.
    const base = this.samples === 0 ? this.initialMs : this.srtt + Math.max(1, 4 * this.rttvar, this.srtt / 2);
    return Math.min(this.maxMs, Math.max(this.minMs, base) * this.backoff);
  }

  onTimeout(): void {
    if (this.backoff < 64) this.backoff *= 2;
  }
}

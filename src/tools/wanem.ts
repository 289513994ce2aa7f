/** The WAN emulator behind `georm wanem` (a UDP relay with impairments); details below. */
import { createSocket, type Socket } from 'node:dgram';
import { isIPv6 } from 'node:net';
import { performance } from 'node:perf_hooks';

/**
 * A userspace WAN emulator: a UDP relay between two endpoints that adds delay, jitter, loss,
 * duplication, reordering and a bandwidth cap per direction, and can cut or restore each direction
 * on command. The kernel here has no netem; this is also a tool for users rehearsing a link.
 *
 *   A ──▶ sideA.listen ══(a2b impairments)══▶ sideB socket ──▶ sideB.target (B)
 *   B ──▶ sideB.listen ══(b2a impairments)══▶ sideA socket ──▶ sideA.target (A)
 *
 * A is configured to reach B at sideA.listen and B to reach A at sideB.listen. GeoMessage identifies
 * peers by the authenticated header, not the source address, so the relay's addresses do not matter.
 */
export interface Impairment {
  /** One-way base delay, ms. */
  delayMs?: number;
  /** Uniform extra delay in [0, jitterMs); packets still leave in order unless `reorder` picks them. */
  jitterMs?: number;
  /** Probability a packet is dropped (0..1). */
  loss?: number;
  /** Probability a packet is delivered twice. */
  duplicate?: number;
  /** Probability a packet is held back by `reorderDelayMs` extra and so overtaken by later ones. */
  reorder?: number;
  reorderDelayMs?: number;
  /** Bandwidth cap, bytes per second (0 = unlimited) and the bottleneck queue size, bytes. */
  rateBytesPerSec?: number;
  queueBytes?: number;
}

export interface RelaySide { listen: { address: string; port: number }; /** may be set later with setTargets */ target?: { address: string; port: number } }
export interface WanEmulatorOptions { a: RelaySide; b: RelaySide; a2b?: Impairment; b2a?: Impairment; seed?: number }
export type Direction = 'a2b' | 'b2a';

export interface DirectionStats { received: number; forwarded: number; lost: number; duplicated: number; reordered: number; queueDrops: number; cutDrops: number; bytes: number }

interface Pending { due: number; seq: number; buf: Buffer }

/** Binary min-heap on (due, seq): the delivery schedule of one direction. */
class Schedule {
  private readonly h: Pending[] = [];
  get size(): number { return this.h.length; }
  peek(): Pending | undefined { return this.h[0]; }
  push(p: Pending): void {
    const h = this.h;
    h.push(p);
    let i = h.length - 1;
    while (i > 0) {
      const j = (i - 1) >> 1;
      if (!less(h[i]!, h[j]!)) break;
      [h[i], h[j]] = [h[j]!, h[i]!];
      i = j;
    }
  }
  pop(): Pending | undefined {
    const h = this.h;
    const top = h[0];
    const last = h.pop();
    if (h.length && last) {
      h[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1, r = l + 1;
        let m = i;
        if (l < h.length && less(h[l]!, h[m]!)) m = l;
        if (r < h.length && less(h[r]!, h[m]!)) m = r;
        if (m === i) break;
        [h[i], h[m]] = [h[m]!, h[i]!];
        i = m;
      }
    }
    return top;
  }
  clear(): void { this.h.length = 0; }
}
function less(a: Pending, b: Pending): boolean { return a.due < b.due || (a.due === b.due && a.seq < b.seq); }

/** Small fast PRNG (mulberry32) so runs can be repeated with a seed. */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

class Lane {
  imp: Required<Impairment>;
  cut = false;
  readonly stats: DirectionStats = { received: 0, forwarded: 0, lost: 0, duplicated: 0, reordered: 0, queueDrops: 0, cutDrops: 0, bytes: 0 };
  private readonly sched = new Schedule();
  private seq = 0;
  private linkFree = 0;       // when the bottleneck finishes sending what it holds
  private lastDue = 0;        // keeps jittered packets in order
  private timer: NodeJS.Timeout | null = null;
  private timerDue = Infinity;

  constructor(imp: Impairment | undefined, private readonly out: Socket, public target: { address: string; port: number } | undefined,
    private readonly rand: () => number) {
    this.imp = normalise(imp);
  }

  set(imp: Impairment): void { this.imp = normalise({ ...this.imp, ...imp }); }

  onPacket(buf: Buffer): void {
    const s = this.stats;
    s.received++;
    if (this.cut) { s.cutDrops++; return; }
    const imp = this.imp;
    if (imp.loss > 0 && this.rand() < imp.loss) { s.lost++; return; }
    const now = performance.now();
    let depart = now;
    if (imp.rateBytesPerSec > 0) {
      const start = Math.max(now, this.linkFree);
      if ((start - now) * imp.rateBytesPerSec / 1000 > imp.queueBytes) { s.queueDrops++; return; }
      this.linkFree = start + (buf.length * 1000) / imp.rateBytesPerSec;
      depart = this.linkFree;
    }
    let due = depart + imp.delayMs + (imp.jitterMs > 0 ? this.rand() * imp.jitterMs : 0);
    if (imp.reorder > 0 && this.rand() < imp.reorder) {
      s.reordered++;
      due += imp.reorderDelayMs;
    } else {
      due = Math.max(due, this.lastDue);
      this.lastDue = due;
    }
    const copies = imp.duplicate > 0 && this.rand() < imp.duplicate ? 2 : 1;
    if (copies === 2) s.duplicated++;
    for (let i = 0; i < copies; i++) {
      if (due <= now && this.sched.size === 0) this.forward(buf);
      else this.sched.push({ due: due + i * 0.05, seq: this.seq++, buf });
    }
    this.arm();
  }

  private forward(buf: Buffer): void {
    if (!this.target) { this.stats.cutDrops++; return; }
    this.stats.forwarded++;
    this.stats.bytes += buf.length;
    this.out.send(buf, this.target.port, this.target.address);
  }

  private arm(): void {
    const next = this.sched.peek();
    if (!next) return;
    if (this.timer && this.timerDue <= next.due) return;
    if (this.timer) clearTimeout(this.timer);
    this.timerDue = next.due;
    this.timer = setTimeout(() => this.run(), Math.max(0, next.due - performance.now()));
  }

  private run(): void {
    this.timer = null;
    this.timerDue = Infinity;
    // Timers fire late by up to ~1 ms; send everything due within half a millisecond.
    const now = performance.now() + 0.5;
    let p: Pending | undefined;
    while ((p = this.sched.peek()) && p.due <= now) {
      this.sched.pop();
      if (this.cut) this.stats.cutDrops++;
      else this.forward(p.buf);
    }
    this.arm();
  }

  stop(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.sched.clear();
  }
}

function normalise(i: Impairment | undefined): Required<Impairment> {
  const d = i?.delayMs ?? 0;
  return {
    delayMs: d, jitterMs: i?.jitterMs ?? 0, loss: i?.loss ?? 0, duplicate: i?.duplicate ?? 0, reorder: i?.reorder ?? 0,
    reorderDelayMs: i?.reorderDelayMs ?? Math.max(2, d / 2), rateBytesPerSec: i?.rateBytesPerSec ?? 0,
    queueBytes: i?.queueBytes ?? 4 << 20,
  };
}

export class WanEmulator {
  private sockA!: Socket;
  private sockB!: Socket;
  private laneA2B!: Lane;
  private laneB2A!: Lane;

  constructor(private readonly opts: WanEmulatorOptions) {}

  async start(): Promise<void> {
    const o = this.opts;
    const rand = rng(o.seed ?? (Math.random() * 2 ** 32) >>> 0);
    this.sockA = await bind(o.a.listen);
    this.sockB = await bind(o.b.listen);
    this.laneA2B = new Lane(o.a2b, this.sockB, o.b.target, rand);
    this.laneB2A = new Lane(o.b2a, this.sockA, o.a.target, rand);
    this.sockA.on('message', (buf) => this.laneA2B.onPacket(buf));
    this.sockB.on('message', (buf) => this.laneB2A.onPacket(buf));
  }

  /** Bound relay ports: where A must send to reach B (a) and where B must send to reach A (b). */
  ports(): { a: number; b: number } {
    return { a: this.sockA.address().port, b: this.sockB.address().port };
  }

  /** Sets where packets are delivered: A's real address (`a`) and B's (`b`). */
  setTargets(t: { a?: { address: string; port: number }; b?: { address: string; port: number } }): void {
    if (t.a) this.laneB2A.target = t.a;
    if (t.b) this.laneA2B.target = t.b;
  }

  /** Drops everything in the given direction(s) until restore(); packets already queued are dropped too. */
  cut(dir?: Direction): void { for (const l of this.lanes(dir)) l.cut = true; }
  restore(dir?: Direction): void { for (const l of this.lanes(dir)) l.cut = false; }
  /** Changes impairments on the fly (fields not given keep their value). */
  set(imp: Impairment, dir?: Direction): void { for (const l of this.lanes(dir)) l.set(imp); }

  stats(): { a2b: DirectionStats; b2a: DirectionStats } {
    return { a2b: { ...this.laneA2B.stats }, b2a: { ...this.laneB2A.stats } };
  }

  async close(): Promise<void> {
    this.laneA2B?.stop();
    this.laneB2A?.stop();
    await Promise.all([this.sockA, this.sockB].filter(Boolean).map((s) => new Promise<void>((r) => s.close(() => r()))));
  }

  private lanes(dir?: Direction): Lane[] {
    return dir === 'a2b' ? [this.laneA2B] : dir === 'b2a' ? [this.laneB2A] : [this.laneA2B, this.laneB2A];
  }
}

function bind(ep: { address: string; port: number }): Promise<Socket> {
  const s = createSocket({ type: isIPv6(ep.address) ? 'udp6' : 'udp4' });
  return new Promise((resolve, reject) => {
    s.once('error', reject);
    s.bind(ep.port, ep.address, () => {
      s.off('error', reject);
      s.on('error', () => { /* ICMP errors from a target that is not listening: a lost packet */ });
      try { s.setRecvBufferSize(8 << 20); s.setSendBufferSize(8 << 20); } catch { /* clamped */ }
      resolve(s);
    });
  });
}

/** Starts an emulator (convenience for tests and the CLI). */
export async function startWanEmulator(opts: WanEmulatorOptions): Promise<WanEmulator> {
  const w = new WanEmulator(opts);
  await w.start();
  return w;
}

/**
 * Units of the planning tools: link bandwidths (as networks are sold, in bits per second, decimal;
 * or as disks are measured, bytes per second, binary), durations with the seed's suffixes, and the
 * GeoMessage efficiency factor the estimates apply.
 */
import { GeormError } from '../util/errors.js';
import { parseSize } from '../util/size.js';

/**
 * Share of a link's raw bandwidth that resync payload actually gets through GeoMessage (headers, acks,
 * authentication). Measured by `npm run bench:gmd` through a 1 Gbit/s tbf (README "Performance"):
 * 90 % at MTU 1500, 96 % at MTU 9000.
 */
export const GEOMESSAGE_EFFICIENCY = { mtu1500: 0.90, mtu9000: 0.96 } as const;
export function efficiencyFor(mtu: number): number {
  return mtu >= 9000 ? GEOMESSAGE_EFFICIENCY.mtu9000 : GEOMESSAGE_EFFICIENCY.mtu1500;
}

const BIT_UNITS: Record<string, number> = { bit: 1, bps: 1, kbit: 1e3, kbps: 1e3, mbit: 1e6, mbps: 1e6, gbit: 1e9, gbps: 1e9, tbit: 1e12 };

/**
 * `100Mbit`, `1Gbit`, `2.5gbps` (bits per second, decimal, as links are sold) or `10MB/s`, `500K/s`
 * (bytes per second, binary as in sizes). Returns bytes per second.
 */
export function parseBandwidth(input: string, what = '--bandwidth'): number {
  const s = input.trim().toLowerCase().replace(/\s+/g, '');
  const bits = /^(\d+(?:\.\d+)?)([kmgt]?bit|[kmg]?bps)(?:\/s)?$/.exec(s);
  if (bits) {
    const v = Number(bits[1]) * BIT_UNITS[bits[2]!]! / 8;
    if (v > 0 && Number.isFinite(v)) return v;
  }
  const bytes = /^(\d+)([kmgt]?(?:i?b)?)\/s$/.exec(s);
  if (bytes) {
    const v = parseSize(`${bytes[1]}${bytes[2]}`, what);
    if (v > 0) return v;
  }
  throw new GeormError('GEORM_ERR_USAGE', `${what}: '${input}' is not a bandwidth; write e.g. 100Mbit, 1Gbit (bits/s) or 12MB/s (bytes/s)`);
}

/** Seconds from `30`, `30s`, `2m`, `24h`, `5d`, `0.5` (the seed's gmdsizing -i/-t suffixes). */
export function parseDuration(input: string, what: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$/i.exec(input);
  const v = m ? Number(m[1]) * ({ '': 1, s: 1, m: 60, h: 3600, d: 86400 } as Record<string, number>)[m[2]!.toLowerCase()]! : NaN;
  if (!(v > 0) || !Number.isFinite(v)) throw new GeormError('GEORM_ERR_USAGE', `${what}: '${input}' is not a duration; write e.g. 10, 30s, 2m, 24h, 5d`);
  return v;
}

/** Bytes per second for people: 1.5 MiB/s (and the bit rate a link must have, decimal). */
export function formatRate(bytesPerSec: number): string {
  const units = ['B/s', 'KiB/s', 'MiB/s', 'GiB/s'];
  let v = bytesPerSec, i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return `${v.toFixed(v < 10 ? 2 : 1)} ${units[i]}`;
}
export function formatBits(bytesPerSec: number): string {
  const b = bytesPerSec * 8;
  if (b >= 1e9) return `${(b / 1e9).toFixed(2)} Gbit/s`;
  if (b >= 1e6) return `${(b / 1e6).toFixed(1)} Mbit/s`;
  return `${(b / 1e3).toFixed(1)} kbit/s`;
}
export function formatSeconds(s: number): string {
  if (!Number.isFinite(s)) return 'never';
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = Math.round(s % 60);
  return h ? `${h} h ${m} min` : `${m} min ${sec} s`;
}

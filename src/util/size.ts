import { GeormError } from './errors.js';

const UNITS: Record<string, number> = {
  '': 1, b: 1,
  k: 1024, kb: 1024, kib: 1024,
  m: 1024 ** 2, mb: 1024 ** 2, mib: 1024 ** 2,
  g: 1024 ** 3, gb: 1024 ** 3, gib: 1024 ** 3,
  t: 1024 ** 4, tb: 1024 ** 4, tib: 1024 ** 4,
};

/**
 * Parses a byte size as administrators write it: `512`, `64K`, `256M`, `256MiB`, `1G`, `1GiB`.
 * Units are binary (K = 1024), as in the seed's and DRBD's tools. Throws GEORM_ERR_BAD_SIZE.
 */
export function parseSize(input: string | number, what = 'size'): number {
  if (typeof input === 'number') {
    if (!Number.isSafeInteger(input) || input < 0) throw badSize(String(input), what);
    return input;
  }
  const m = /^\s*(\d+)\s*([a-zA-Z]*)\s*$/.exec(input);
  if (!m) throw badSize(input, what);
  const unit = UNITS[m[2]!.toLowerCase()];
  if (unit === undefined) throw badSize(input, what);
  const value = Number(m[1]) * unit;
  if (!Number.isSafeInteger(value)) throw badSize(input, what);
  return value;
}

function badSize(input: string, what: string): GeormError {
  return new GeormError('GEORM_ERR_BAD_SIZE',
    `invalid ${what} '${input}': expected a whole number of bytes with an optional unit (512, 64K, 256M, 256MiB, 1G, 1GiB)`);
}

/** Formats bytes for humans: 1536 -> "1.5 KiB". */
export function formatSize(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = bytes;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return i === 0 ? `${v} B` : `${v.toFixed(v < 10 ? 2 : 1).replace(/\.?0+$/, '')} ${units[i]}`;
}

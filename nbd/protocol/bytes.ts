/**
 * Big-endian 32-bit fields read and written byte by byte. Buffer's readUInt32BE/writeUInt32BE are
 * calls with range checks that stayed visible in per-request profiles (NBD request headers, the
 * GMD's per-write headers); these inline into plain loads and stores. The caller has checked that
 * the four bytes lie inside the buffer, and a value written must fit 32 bits.
 */
export function getU32(b: Buffer, at: number): number {
  return b[at]! * 0x1000000 + ((b[at + 1]! << 16) | (b[at + 2]! << 8) | b[at + 3]!);
}

export function putU32(b: Buffer, at: number, v: number): void {
  b[at] = v >>> 24; b[at + 1] = v >>> 16; b[at + 2] = v >>> 8; b[at + 3] = v;
}

export function getU16(b: Buffer, at: number): number {
  return (b[at]! << 8) | b[at + 1]!;
}

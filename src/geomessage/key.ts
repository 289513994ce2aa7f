/** Loading the cluster key that authenticates every GeoMessage packet, with its refusals. */
import { open } from 'node:fs/promises';
import { GeoMessageError } from './errors.js';

/** Shortest key we accept: HMAC-SHA-256 keys below 16 bytes give less than the 128-bit tag's strength. */
export const MIN_KEY_BYTES = 16;

/**
 * Reads the cluster key. The file must exist, be a regular file, and not be readable or writable by
 * group or others (like ssh's private keys): a key anyone on the box can read authenticates nothing.
 * The key is the file's bytes with trailing whitespace removed (so `openssl rand -hex 32 > key` works).
 */
export async function loadClusterKey(path: string): Promise<Buffer> {
  let fh;
  try {
    fh = await open(path, 'r');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new GeoMessageError('GEOMSG_ERR_KEY',
      code === 'ENOENT'
        ? `cluster key file ${path} does not exist; create it with: umask 077; openssl rand -hex 32 > ${path}`
        : `cannot open cluster key file ${path}: ${(err as Error).message}`, { cause: err });
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new GeoMessageError('GEOMSG_ERR_KEY', `cluster key ${path} is not a regular file`);
    if ((st.mode & 0o077) !== 0) {
      throw new GeoMessageError('GEOMSG_ERR_KEY',
        `cluster key file ${path} has mode ${(st.mode & 0o777).toString(8)}: it must not be accessible by group or others; run: chmod 600 ${path}`);
    }
    let key = await fh.readFile();
    let end = key.length;
    while (end > 0 && (key[end - 1] === 0x0a || key[end - 1] === 0x0d || key[end - 1] === 0x20 || key[end - 1] === 0x09)) end--;
    key = key.subarray(0, end);
    if (key.length < MIN_KEY_BYTES) {
      throw new GeoMessageError('GEOMSG_ERR_KEY', `cluster key file ${path} holds ${key.length} bytes; at least ${MIN_KEY_BYTES} are required`);
    }
    return Buffer.from(key);
  } finally {
    await fh.close();
  }
}

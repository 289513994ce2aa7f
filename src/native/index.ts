import { fstatSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { GeormError } from '../util/errors.js';

/**
 * The only importer of the native addon (native-bindings/georm_native.c). Node has no unix datagram
 * sockets, no ioctl, no fallocate modes and no SEEK_DATA, so these few calls live in C.
 *
 * The addon is optional: when it did not build (no compiler, no headers) `nativeAvailable` is false,
 * `nativeUnavailableReason` says why, and every function below throws a GeormError with code
 * NATIVE_UNAVAILABLE (except `sdNotify`, which falls back to the `systemd-notify` tool). Callers keep
 * a plain path: FileBackend reports no TRIM/extents, `--attach` refuses with the reason.
 *
 * System-call failures are Errors with `code` (errno name, e.g. 'ENOENT'), `errno` (positive number),
 * `syscall` and, where there is one, `path`.
 */

/** Completion callback of the addon's asynchronous calls: undefined on success. */
type Done = (err?: Error) => void;

export interface Addon {
  seekData(fd: number, offset: number): number;
  seekHole(fd: number, offset: number): number;
  punchHoleAsync(fd: number, offset: number, length: number, done: Done): void;
  zeroRangeAsync(fd: number, offset: number, length: number, done: Done): void;
  blockDeviceSize(fd: number): number;
  pread(fd: number, buf: Buffer, bufOffset: number, length: number, position: number): number;
  pwrite(fd: number, buf: Buffer, bufOffset: number, length: number, position: number): number;
  sdNotify(state: string): boolean;
  socketpair(): [number, number];
  nbdAttach(device: string, socketFd: number, opts: NbdAttachOptions, onEnd: Done): void;
  nbdDetach(device: string, done: Done): void;
  // GeoMessage datagram batches (udp.c); wrapped by ./udp.ts
  macKey(key: Buffer): object;
  udpAddress(ipv6: boolean, address: string, port: number): Buffer;
  udpOpen(ipv6: boolean, address: string, port: number, bufferBytes: number): [object, number];
  udpRecvStart(sock: object, recvBuffer: Buffer, meta: Uint32Array, key: object | null, onBatch: (count: number) => void, onWritable: () => void): void;
  udpSend(sock: object, buf: Buffer, meta: Uint32Array, count: number, sockaddr: Buffer, key: object | null): number;
  udpWaitWritable(sock: object): void;
  udpInfo(sock: object): [boolean, boolean, number, number, boolean];
  udpGso(sock: object, firstWaitMs: number, maxWaitMs: number): void;
  udpClose(sock: object): void;
}

/** Repository root: this file runs from dist/src/native/. */
const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

function load(): { addon: Addon | null; reason: string | null } {
  if (process.env.GEORM_NATIVE_DISABLE === '1') return { addon: null, reason: 'disabled by GEORM_NATIVE_DISABLE=1' };
  if (process.platform !== 'linux') return { addon: null, reason: `not supported on ${process.platform} (Linux only)` };
  try {
    const require = createRequire(import.meta.url);
    const nodeGypBuild = require('node-gyp-build') as (dir: string) => unknown;
    return { addon: nodeGypBuild(process.env.GEORM_NATIVE_DIR ?? ROOT) as Addon, reason: null };
  } catch (err) {
    const msg = err instanceof Error ? err.message.split('\n')[0] : String(err);
    return { addon: null, reason: `native addon not built (${msg}); rebuild with \`npm rebuild\` or \`npx node-gyp rebuild\`` };
  }
}

const loaded = load();
const addon = loaded.addon;

/** True when the native addon loaded. */
export const nativeAvailable: boolean = addon !== null;
/** Why the addon is unavailable, or null when it loaded. */
export const nativeUnavailableReason: string | null = loaded.reason;

/** The loaded addon for the wrappers in this folder (./udp.ts), or null. Not for use outside src/native. */
export function loadedAddon(): Addon | null {
  return addon;
}

function need(): Addon {
  if (!addon) throw new GeormError('NATIVE_UNAVAILABLE', `native addon unavailable: ${loaded.reason}`);
  return addon;
}

/** First data byte at or after `offset`, or null when there is no more data (ENXIO). */
export function seekData(fd: number, offset: number): number | null {
  const r = need().seekData(fd, offset);
  return r < 0 ? null : r;
}

/** First hole at or after `offset`; the end of the file counts as a hole (also past the end). */
export function seekHole(fd: number, offset: number): number {
  const r = need().seekHole(fd, offset);
  return r < 0 ? fstatSync(fd).size : r;
}

/** One pread(2) into buf[bufOffset, bufOffset + length): fs.readSync without its layers. */
export function pread(fd: number, buf: Buffer, bufOffset: number, length: number, position: number): number {
  return need().pread(fd, buf, bufOffset, length, position);
}

/** One pwrite(2) from buf[bufOffset, bufOffset + length): fs.writeSync without its layers. */
export function pwrite(fd: number, buf: Buffer, bufOffset: number, length: number, position: number): number {
  return need().pwrite(fd, buf, bufOffset, length, position);
}

/**
 * Runs one of the addon's fallocate calls on the libuv threadpool (a large range can take seconds
 * on a block device, which must not stall the event loop). Bad arguments and a missing addon reject
 * too, so callers have one error path. The fd must stay open until the promise settles.
 */
function fallocAsync(call: 'punchHoleAsync' | 'zeroRangeAsync', fd: number, offset: number, length: number): Promise<void> {
  return new Promise((resolve, reject) => need()[call](fd, offset, length, (err) => (err ? reject(err) : resolve())));
}

/** Deallocates a range (reads return zeros), in the threadpool; the file size is kept. */
export function punchHoleAsync(fd: number, offset: number, length: number): Promise<void> {
  return fallocAsync('punchHoleAsync', fd, offset, length);
}

/** Zeroes a range without writing data blocks (it stays allocated), in the threadpool; the file size is kept. */
export function zeroRangeAsync(fd: number, offset: number, length: number): Promise<void> {
  return fallocAsync('zeroRangeAsync', fd, offset, length);
}

/** Size in bytes of a block device open at `fd`. */
export function blockDeviceSize(fd: number): number {
  return need().blockDeviceSize(fd);
}

/** Two connected unix stream sockets (close-on-exec); the caller owns both fds. */
export function socketpair(): [number, number] {
  return need().socketpair();
}

/**
 * Sends a state string ('READY=1', 'STOPPING=1', 'STATUS=…', 'WATCHDOG=1', several joined by '\n')
 * to systemd. Returns false when not started by systemd with a notify socket. Without the addon it
 * runs `systemd-notify`, which needs NotifyAccess=all in the unit (georm@.service sets it).
 */
export function sdNotify(state: string): boolean {
  if (!process.env.NOTIFY_SOCKET) return false;
  if (addon) return addon.sdNotify(state);
  return notifyWithTool(state);
}

function notifyWithTool(state: string): boolean {
  const require = createRequire(import.meta.url);
  const { spawnSync } = require('node:child_process') as typeof import('node:child_process');
  const r = spawnSync('systemd-notify', [`--pid=${process.pid}`, ...state.split('\n').filter(Boolean)], { stdio: 'ignore' });
  return r.status === 0;
}

/** NBD transmission flags understood by the Linux client (NBD_SET_FLAGS); see the NBD protocol. */
export const NBD_FLAG = {
  HAS_FLAGS: 1 << 0,
  READ_ONLY: 1 << 1,
  SEND_FLUSH: 1 << 2,
  SEND_FUA: 1 << 3,
  ROTATIONAL: 1 << 4,
  SEND_TRIM: 1 << 5,
  SEND_WRITE_ZEROES: 1 << 6,
  CAN_MULTI_CONN: 1 << 8,
} as const;

export interface NbdAttachOptions {
  /** Device size in bytes; rounded down to a multiple of blockSize. */
  size: number;
  /** Logical block size: a power of two from 512 to 65536 (default 4096). */
  blockSize: number;
  /** NBD transmission flags (NBD_FLAG.*), as the server would advertise them. */
  flags: number;
  /** Seconds before the kernel fails a request the server did not answer (0 = kernel default, 30 s). */
  timeoutSec: number;
}

/** A /dev/nbdN bound to a socket; the kernel's NBD_DO_IT runs on a thread until `detach()` or a failure. */
export interface NbdAttachment {
  readonly device: string;
  /** Settles when the kernel lets go of the device: resolves after detach, rejects if the link failed. */
  readonly ended: Promise<void>;
  readonly attached: boolean;
  /** Flushes the device, sends NBD_CMD_DISC and releases the device; resolves once the kernel let go. */
  detach(): Promise<void>;
}

/**
 * Binds `device` (e.g. /dev/nbd0) to the connected stream socket `socketFd`, whose other end speaks
 * NBD transmission (no handshake: the sizes and flags are given here). Ownership of `socketFd` passes
 * to the kernel: it is closed here, also on failure. Needs root (CAP_SYS_ADMIN) and the nbd module.
 */
export function nbdAttach(device: string, socketFd: number, opts: NbdAttachOptions): NbdAttachment {
  const a = need();
  let attached = true;
  let resolveEnded!: () => void;
  let rejectEnded!: (e: Error) => void;
  const ended = new Promise<void>((res, rej) => { resolveEnded = res; rejectEnded = rej; });
  // A failed link is reported through `ended`; keep an unobserved rejection from killing the process.
  ended.catch(() => {});
  a.nbdAttach(device, socketFd, opts, (err) => {
    attached = false;
    if (err) rejectEnded(err); else resolveEnded();
  });
  let detaching: Promise<void> | null = null;
  return {
    device,
    ended,
    get attached() { return attached; },
    detach(): Promise<void> {
      // After a failed link the kernel has already let go: nothing to disconnect.
      detaching ??= attached ? nbdDetach(device).then(() => ended.catch(() => {})) : Promise.resolve();
      return detaching;
    },
  };
}

/**
 * Detaches any /dev/nbdN, also one attached by another process or by `nbd-client` (like
 * `nbd-client -d`): fsync, NBD_DISCONNECT, NBD_CLEAR_SOCK.
 */
export function nbdDetach(device: string): Promise<void> {
  const a = need();
  return new Promise((res, rej) => a.nbdDetach(device, (err) => (err ? rej(err) : res())));
}

import net from 'node:net';
import { closeSync } from 'node:fs';
import { GeormError } from '../util/errors.js';
import { nativeAvailable, nativeUnavailableReason, nbdAttach, socketpair, type NbdAttachment } from './index.js';

/**
 * Attaching an NBD server that lives in this process to a kernel /dev/nbdN: a socketpair, one end
 * served by the server's transmission phase (no handshake: size and flags go to the kernel by ioctl),
 * the other handed to the kernel. Used by `georm export --attach` and the GMD.
 */
export interface AttachSpec {
  /** e.g. /dev/nbd0 */
  device: string;
  /** Export size in bytes (the kernel rounds down to the block size). */
  size: number;
  /** NBD transmission flags the server would advertise for this export (nbd/ transmissionFlags). */
  flags: number;
  /** Seconds the kernel waits for a reply before failing the request (and the device) with EIO. */
  timeoutSec: number;
  /** Serves one connected socket in the transmission phase (NbdServer.serveSocket bound to an export). */
  serve(socket: net.Socket): void;
}

export interface Attached extends NbdAttachment {
  /** The server side of the socketpair. */
  readonly socket: net.Socket;
}

/** Default kernel request timeout for attached devices: long enough for a resync burst, short enough not to hang. */
export const DEFAULT_ATTACH_TIMEOUT_SEC = 60;

/** The largest block size (≤ 4096) that divides `size`, so the device covers the whole export. */
export function blockSizeFor(size: number): number {
  for (const bs of [4096, 2048, 1024]) if (size % bs === 0) return bs;
  return 512;
}

export function attachToDevice(spec: AttachSpec): Attached {
  if (!nativeAvailable) {
    throw new GeormError('GEORM_ERR_NATIVE', `cannot attach ${spec.device}: ${nativeUnavailableReason}; ` +
      'serve NBD on a socket instead and attach with nbd-client');
  }
  if (!Number.isInteger(spec.timeoutSec) || spec.timeoutSec < 1) {
    throw new GeormError('GEORM_ERR_USAGE', `attach timeout must be a whole number of seconds ≥ 1, not ${spec.timeoutSec}`);
  }
  const [mine, kernels] = socketpair();
  let socket: net.Socket;
  try {
    socket = new net.Socket({ fd: mine, readable: true, writable: true });
  } catch (e) {
    closeSync(mine);
    closeSync(kernels);
    throw e;
  }
  socket.setNoDelay?.(true);
  spec.serve(socket);
  let att: NbdAttachment;
  try {
    att = nbdAttach(spec.device, kernels, { size: spec.size, blockSize: blockSizeFor(spec.size), flags: spec.flags, timeoutSec: spec.timeoutSec });
  } catch (e) {
    socket.destroy();
    const err = e as NodeJS.ErrnoException;
    throw new GeormError('GEORM_ERR_ATTACH', `cannot attach ${spec.device}: ${err.message}`, { cause: e });
  }
  return {
    device: att.device,
    ended: att.ended,
    get attached() { return att.attached; },
    socket,
    detach: () => att.detach(),
  };
}


/** Parses `--attach-timeout` (whole seconds ≥ 1). */
export function parseAttachTimeout(text: string | undefined): number {
  if (text === undefined) return DEFAULT_ATTACH_TIMEOUT_SEC;
  const n = Number(text);
  if (!/^\d+$/.test(text.trim()) || n < 1) throw new GeormError('GEORM_ERR_USAGE', `--attach-timeout must be a whole number of seconds ≥ 1, not '${text}'`);
  return n;
}

interface AttachLogger { info(obj: object, msg: string): void; error(obj: object, msg: string): void }

/**
 * `--attach` for a serving export: attaches, logs the device's end. A link that ends without a
 * detach (kernel timeout, socket error) is logged; the process keeps serving its other listeners
 * and the device fails I/O until re-attached (see README, recovery).
 */
export function attachExport(device: string, timeoutSec: number, size: number, flags: number,
  serve: (socket: net.Socket) => void, log: AttachLogger): Attached {
  const a = attachToDevice({ device, size, flags, timeoutSec, serve });
  log.info({ device, size, timeoutSec }, 'attached');
  a.ended.then(() => log.info({ device }, 'detached'), (err: Error) => log.error({ device, err: err.message }, 'device link ended unexpectedly'));
  return a;
}

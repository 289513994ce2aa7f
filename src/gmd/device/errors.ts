/**
 * Errors the GMD gives the NBD server for application I/O it refuses: each carries the errno the
 * client receives (nbd/errno.ts reads `errno`) and the plain errno name as its `code`.
 */

import { GeormError } from '../../util/errors.js';
import { NbdErrno } from '../../../nbd/protocol/constants.js';

/** The I/O refusals: secondary role (EPERM), not AVAILABLE (EIO), an unsupported fast zero (ENOTSUP). */
export type IoRefusal = 'EPERM' | 'EIO' | 'ENOTSUP';

/** An errno-carrying error for the NBD server (GMD_ERR_EPERM, GMD_ERR_EIO, GMD_ERR_ENOTSUP until `code` is set to the errno name). */
export function ioError(code: IoRefusal, message: string): Error {
  const e = new GeormError(`GMD_ERR_${code}`, message) as GeormError & { errno: number };
  e.errno = NbdErrno[code];
  Object.defineProperty(e, 'code', { value: code });
  return e;
}

/** Whether a volume refused a fast zero (the errno ioError('ENOTSUP') and the file backend carry). */
export function isFastZeroRefusal(e: unknown): boolean {
  return (e as { errno?: unknown } | null)?.errno === NbdErrno.ENOTSUP;
}

import { NbdErrno } from './protocol/constants.js';

const BY_CODE: Record<string, number> = {
  EPERM: NbdErrno.EPERM, EACCES: NbdErrno.EPERM, EROFS: NbdErrno.EPERM,
  EIO: NbdErrno.EIO,
  ENOMEM: NbdErrno.ENOMEM,
  EINVAL: NbdErrno.EINVAL,
  ENOSPC: NbdErrno.ENOSPC, EDQUOT: NbdErrno.ENOSPC, EFBIG: NbdErrno.ENOSPC,
  EOVERFLOW: NbdErrno.EOVERFLOW,
  ENOTSUP: NbdErrno.ENOTSUP, EOPNOTSUPP: NbdErrno.ENOTSUP,
  ESHUTDOWN: NbdErrno.ESHUTDOWN,
};
const ALLOWED = new Set<number>(Object.values(NbdErrno));

/**
 * Maps a backend error to the errno sent to the client: a numeric `errno` from the allowed set
 * (as a GMD sets it), else Node's `code` string, else EIO. Node's own `errno` is negative and
 * platform-specific, so the code string wins for system errors.
 */
export function toNbdErrno(err: unknown): number {
  if (err && typeof err === 'object') {
    const e = err as { errno?: unknown; code?: unknown };
    if (typeof e.code === 'string' && BY_CODE[e.code] !== undefined) return BY_CODE[e.code]!;
    if (typeof e.errno === 'number' && ALLOWED.has(e.errno)) return e.errno;
  }
  return NbdErrno.EIO;
}

/** An Error carrying an NBD errno, for backends to reject with. */
export function nbdError(errno: number, message: string): Error & { errno: number } {
  return Object.assign(new Error(message), { errno });
}

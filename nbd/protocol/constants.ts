/**
 * NBD protocol constants, from the NBD protocol specification (doc/proto.md of
 * NetworkBlockDevice/nbd). Everything on the wire is big-endian.
 */

export const NBD_DEFAULT_PORT = 10809;

/** 'NBDMAGIC' */
export const NBDMAGIC = 0x4e42444d41474943n;
/** 'IHAVEOPT' */
export const IHAVEOPT = 0x49484156454f5054n;
export const OPTION_REPLY_MAGIC = 0x3e889045565a9n;

export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

/** Sizes of fixed wire structures. */
export const REQUEST_SIZE = 28;
export const SIMPLE_REPLY_SIZE = 16;
export const STRUCTURED_HEADER_SIZE = 20;
export const OPTION_HEADER_SIZE = 16;

/** Handshake flags (server → client, u16). */
export const FLAG_FIXED_NEWSTYLE = 1 << 0;
export const FLAG_NO_ZEROES = 1 << 1;
/** Client flags (client → server, u32). */
export const CLIENT_FLAG_FIXED_NEWSTYLE = 1 << 0;
export const CLIENT_FLAG_NO_ZEROES = 1 << 1;

export const enum Opt {
  EXPORT_NAME = 1,
  ABORT = 2,
  LIST = 3,
  PEEK_EXPORT = 4,
  STARTTLS = 5,
  INFO = 6,
  GO = 7,
  STRUCTURED_REPLY = 8,
  LIST_META_CONTEXT = 9,
  SET_META_CONTEXT = 10,
  EXTENDED_HEADERS = 11,
}

const ERR = 0x80000000;
export const enum Rep {
  ACK = 1,
  SERVER = 2,
  INFO = 3,
  META_CONTEXT = 4,
  ERR_UNSUP = ERR + 1,
  ERR_POLICY = ERR + 2,
  ERR_INVALID = ERR + 3,
  ERR_PLATFORM = ERR + 4,
  ERR_TLS_REQD = ERR + 5,
  ERR_UNKNOWN = ERR + 6,
  ERR_SHUTDOWN = ERR + 7,
  ERR_BLOCK_SIZE_REQD = ERR + 8,
  ERR_TOO_BIG = ERR + 9,
  ERR_EXT_HEADER_REQD = ERR + 10,
}

export const enum Info {
  EXPORT = 0,
  NAME = 1,
  DESCRIPTION = 2,
  BLOCK_SIZE = 3,
}

/** Transmission flags (u16). */
export const TF_HAS_FLAGS = 1 << 0;
export const TF_READ_ONLY = 1 << 1;
export const TF_SEND_FLUSH = 1 << 2;
export const TF_SEND_FUA = 1 << 3;
export const TF_ROTATIONAL = 1 << 4;
export const TF_SEND_TRIM = 1 << 5;
export const TF_SEND_WRITE_ZEROES = 1 << 6;
export const TF_SEND_DF = 1 << 7;
export const TF_CAN_MULTI_CONN = 1 << 8;
export const TF_SEND_RESIZE = 1 << 9;
export const TF_SEND_CACHE = 1 << 10;
export const TF_SEND_FAST_ZERO = 1 << 11;

export const enum Cmd {
  READ = 0,
  WRITE = 1,
  DISC = 2,
  FLUSH = 3,
  TRIM = 4,
  CACHE = 5,
  WRITE_ZEROES = 6,
  BLOCK_STATUS = 7,
}

/** Command flags (u16). */
export const CMD_FLAG_FUA = 1 << 0;
export const CMD_FLAG_NO_HOLE = 1 << 1;
export const CMD_FLAG_DF = 1 << 2;
export const CMD_FLAG_REQ_ONE = 1 << 3;
export const CMD_FLAG_FAST_ZERO = 1 << 4;

export const REPLY_FLAG_DONE = 1 << 0;

export const enum ReplyType {
  NONE = 0,
  OFFSET_DATA = 1,
  OFFSET_HOLE = 2,
  BLOCK_STATUS = 5,
  ERROR = 0x8001,
  ERROR_OFFSET = 0x8002,
}

/** base:allocation flags. */
export const STATE_HOLE = 1 << 0;
export const STATE_ZERO = 1 << 1;

/** Errors sent in replies (Linux errno values, as the spec fixes them). */
export const NbdErrno = {
  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
} as const;
export type NbdErrnoValue = (typeof NbdErrno)[keyof typeof NbdErrno];

/** The one metadata context we serve. */
export const BASE_ALLOCATION = 'base:allocation';
export const BASE_ALLOCATION_ID = 1;

/** Largest READ/WRITE payload accepted by default (the spec's DoS threshold; the kernel's limit). */
export const DEFAULT_MAX_PAYLOAD = 32 * 1024 * 1024;
/** Option data larger than this is refused (ERR_TOO_BIG) and skipped. */
export const MAX_OPTION_DATA = 64 * 1024;

/**
 * The contract between the NBD server and whatever stores the blocks. The server validates every
 * request (range, alignment, flags) before calling a Backend, so a Backend may assume
 * `0 <= offset`, `offset + length <= size()` and `length > 0` unless stated otherwise.
 *
 * Errors: reject with an Error carrying a numeric `errno` (see `NbdErrno` in ./protocol/constants.ts) or a
 * Node `code` such as 'EIO'/'ENOSPC'/'EPERM'; the server maps it to the NBD error sent to the client.
 */
export interface BackendFlags {
  readOnly: boolean;
  /** FLUSH is meaningful (data may be cached before it). */
  canFlush: boolean;
  /** FUA honoured per write. */
  canFua: boolean;
  canTrim: boolean;
  canZero: boolean;
  /** Zeroing can be done faster than writing zeros (for NBD_CMD_FLAG_FAST_ZERO). */
  canFastZero: boolean;
  canCache: boolean;
  /** Several connections to this backend see one consistent view and FLUSH covers all of them. */
  canMultiConn: boolean;
  /** BLOCK_STATUS can tell holes and zeros from data (otherwise everything is reported as data). */
  canExtents: boolean;
  rotational: boolean;
}

export interface Extent {
  /** Length in bytes, > 0. */
  length: number;
  /** NBD base:allocation flags: 1 = hole (STATE_HOLE), 2 = reads as zeros (STATE_ZERO). */
  flags: number;
}

export interface WriteOptions {
  /** Force unit access: data durable before the promise resolves. */
  fua: boolean;
}

export interface ZeroOptions extends WriteOptions {
  /** NBD_CMD_FLAG_NO_HOLE: the range must stay allocated. */
  noHole: boolean;
  /** NBD_CMD_FLAG_FAST_ZERO: fail with ENOTSUP rather than fall back to a slow write. */
  fastZero: boolean;
  /**
   * Prefer deallocating the range (a punched hole) over zeroing it in place, as a TRIM would; the
   * range must still read back as zeros. Ignored with `noHole`. (A GMD carries out TRIM this way.)
   */
  deallocate?: boolean;
}

export interface Backend {
  /** Size in bytes; constant for the life of a connection. */
  size(): number;
  flags(): BackendFlags;
  /** Preferred block sizes advertised in NBD_INFO_BLOCK_SIZE. */
  blockSizes?(): { minimum: number; preferred: number; maximum: number };
  /** Read `length` bytes at `offset`; the returned buffer has exactly `length` bytes. */
  read(offset: number, length: number): Promise<Buffer>;
  write(offset: number, data: Buffer, opts: WriteOptions): Promise<void>;
  flush(): Promise<void>;
  trim(offset: number, length: number, opts: WriteOptions): Promise<void>;
  zero(offset: number, length: number, opts: ZeroOptions): Promise<void>;
  /** Hint to pre-load a range; may be a no-op. */
  cache?(offset: number, length: number): Promise<void>;
  /** Extents covering at least the first byte of [offset, offset+length), in order, not past the end. */
  blockStatus?(offset: number, length: number): Promise<Extent[]>;
  /** Called once when the server stops using the backend. */
  close?(): Promise<void>;

  /**
   * Optional fast path, used instead of read() when present: fill `buf[bufOffset, bufOffset+length)`
   * and call `cb` exactly once. Lets the server read straight into its reply buffer, with no promise
   * and no extra buffer per request.
   */
  readInto?(offset: number, length: number, buf: Buffer, bufOffset: number, cb: (err: Error | null) => void): void;
  /**
   * Optional fast path, used instead of write() when present; calls `cb` exactly once. The backend
   * must not keep `data` after calling `cb`: the server reuses the buffer for later requests.
   */
  writeCb?(offset: number, data: Buffer, fua: boolean, cb: (err: Error | null) => void): void;
}

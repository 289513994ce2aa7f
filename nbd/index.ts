/** Public API of the NBD server library. nbd/ knows nothing of mirroring and imports nothing from src/. */
export type { Backend, BackendFlags, Extent, WriteOptions, ZeroOptions } from './backend.js';
export { NbdServer, parseListenTarget, nbdUri, type NbdServerOptions, type ListenTarget } from './server.js';
export { ExportRegistry, transmissionFlags, blockSizesOf, type ExportSpec } from './exports.js';
export { FileBackend, setFileExtensions, type FileExtensions, type FileBackendOptions } from './file-backend.js';
export { Handshake, type HandshakeOutcome, type TransmissionParams } from './handshake.js';
export { toNbdErrno, nbdError } from './errno.js';
export type { NbdLogger, NbdLogFn } from './log.js';
export { silentNbdLogger } from './log.js';
export * as protocol from './protocol/constants.js';
export * as wire from './protocol/wire.js';

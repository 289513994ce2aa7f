/**
 * GeoMessage: reliable, authenticated messaging between georm machines over UDP on one or more
 * networks. It knows nothing of blocks; see docs/contracts.md for the API and README for behaviour.
 */
export { openGeoMessage, GeoMessageTransport } from './transport.js';
export type {
  GeoMessage, GeoMessageOptions, GeoMessageEvents, NetworkEndpoint, PeerSpec,
  Payload, IncomingMessage, Handler, HandlerOptions, PayloadMemory, SendOptions,
} from './api.js';
export { loadClusterKey, MIN_KEY_BYTES } from './key.js';
export { GeoMessageError, type GeoMessageErrorCode } from './errors.js';
export type { GeoMessageStats, MachineStats, NetworkStats, LinkStats, DropStats } from './stats.js';

/** GeoMessage's error type and its catalogue of codes. */
import { GeormError } from '../util/errors.js';

/** Stable error codes of the GeoMessage layer (callers match on these, never on text). */
export type GeoMessageErrorCode =
  | 'GEOMSG_ERR_PEER_DOWN'      // peer declared down (Promote Failure Timeout or declareDown)
  | 'GEOMSG_ERR_TIMEOUT'        // the caller's timeoutMs expired
  | 'GEOMSG_ERR_REMOTE'         // the remote handler threw; message carries its text
  | 'GEOMSG_ERR_NO_HANDLER'     // no handler for the service on the peer
  | 'GEOMSG_ERR_PEER_RESTART'   // the peer restarted (new epoch) while the message was in flight
  | 'GEOMSG_ERR_CLOSED'         // close() was called
  | 'GEOMSG_ERR_UNKNOWN_PEER'   // peer not in the configuration
  | 'GEOMSG_ERR_TOO_LARGE'      // message exceeds the fragment limit
  | 'GEOMSG_ERR_KEY'            // cluster key missing, unreadable, too short or too open
  | 'GEOMSG_ERR_CONFIG';        // bad options

export class GeoMessageError extends GeormError {
  declare readonly code: GeoMessageErrorCode;
  constructor(code: GeoMessageErrorCode, message: string, options?: { cause?: unknown; exitCode?: number }) {
    super(code, message, options);
    this.name = 'GeoMessageError';
  }
}

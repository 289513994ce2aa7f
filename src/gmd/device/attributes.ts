/**
 * Checks attribute changes that come from the control socket (`georm set`), each one on its own
 * (DESIGN §4 rule 9): a bad value is refused with a clear message and changes nothing.
 */

import { GeormError } from '../../util/errors.js';
import { isMode, isRole } from '../../config/vocabulary.js';
import type { GmdAttributes } from './types.js';

/**
 * The region size is the state map's identity (a different one would make resync copy the wrong
 * ranges), so it is not changeable here.
 */
export function checkAttributes(a: unknown): Partial<GmdAttributes> {
  const bad = (m: string) => new GeormError('GMD_ERR_BAD_REQUEST', `set: ${m}`);
  if (!a || typeof a !== 'object' || Array.isArray(a)) throw bad('expected an object of attributes');
  const o = a as Record<string, unknown>;
  const out: Partial<GmdAttributes> = {};
  for (const [k, v] of Object.entries(o)) {
    if (k === 'mode') {
      if (!isMode(v)) throw bad(`mode must be sync, mwc or async, not ${JSON.stringify(v)}`);
      out.mode = v;
    } else if (k === 'role') {
      if (!isRole(v)) throw bad(`role must be primary, secondary or none, not ${JSON.stringify(v)}`);
      out.role = v;
    } else if (k === 'syncRate' || k === 'hwm' || k === 'resyncRateLimit') {
      if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < (k === 'syncRate' ? 512 : 0)) throw bad(`${k} must be a whole number of bytes${k === 'syncRate' ? ' (at least 512)' : ''}, not ${JSON.stringify(v)}`);
      out[k] = v;
    } else {
      throw bad(`attribute '${k}' cannot be changed here${k === 'regionSize' ? ' (it is the state map\'s identity: change the configuration and recreate the map)' : ''}`);
    }
  }
  return out;
}

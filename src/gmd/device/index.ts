/** The GMD device's public surface: the device and its types (what the daemon, admin, tests and benchmarks import). */

export { GeoMirrorDevice } from './device.js';
export type { GmdAttributes, GmdEvent, GmdOptions, GmdResources, GmdStats, GmdStatus } from './types.js';
export { START_REFUSAL_CODES, startRefusalText, decideStart, type StartRefusal, type StartFacts, type StartDecision } from './start-rules.js';

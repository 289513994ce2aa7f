/** The state map's public surface: the file format's constants, the running map, dumps and the show-state display. */
export {
  CELL_CLEAN, CELL_STALE, CELL_INFLIGHT_MAX, DEFAULT_REGION_SIZE, MAX_REGIONS, StateMapError,
  type StateMapErrorCode, type StateMapIdentity,
} from './format.js';
export {
  StateMap, readStateMapFile, mergeAndClear, resizeStateMap, type StateMapCounts, type StateMapOptions, type StateMapStats, type StateMapSnapshot,
} from './statemap.js';
export { dumpStateMap, parseDump, type DumpSource, type ParsedDump } from './dump.js';
export {
  formatShowState, showStateExitCode, divergence, unifyPreview, isMapClean, type ShowStateOptions, type Divergence,
} from './show.js';

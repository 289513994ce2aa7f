export {
  CELL_CLEAN, CELL_STALE, CELL_INFLIGHT_MAX, DEFAULT_REGION_SIZE, StateMapError,
  type StateMapErrorCode, type StateMapIdentity,
} from './format.js';
export {
  StateMap, readStateMapFile, type StateMapCounts, type StateMapOptions, type StateMapStats, type StateMapSnapshot,
} from './statemap.js';

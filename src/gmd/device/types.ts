/**
 * The GMD's public types: its attributes, the resources a configured GMD holds, the options it is
 * built with, and what status() reports. No logic beyond the zeroed statistics.
 */

import type { Backend } from '../../../nbd/backend.js';
import type { Logger } from '../../util/log.js';
import type { MapPort, PeerTransport } from '../ports.js';
import type { GmdMode, GmdRole, GmdState } from '../protocol.js';
import type { ResyncProgress } from '../resync.js';

export interface GmdAttributes {
  mode: GmdMode;
  role: GmdRole;
  regionSize: number;
  /** Bytes per resync request. */
  syncRate: number;
  /** Async high water mark in bytes. */
  hwm: number;
  /** Resync bytes per second, 0 = unlimited. */
  resyncRateLimit: number;
}

/** Local resources of a configured (STOPPED/AVAILABLE) GMD. */
export interface GmdResources { local: Backend; map: MapPort; attrs: GmdAttributes }

export interface GmdOptions {
  name: string;
  minor: number;
  machine: string;
  /** Remote peers (machines at the other site holding this GMD). */
  peers: string[];
  net: PeerTransport;
  /** Opens volume and state map (DEFINED -> STOPPED); re-reads the configuration each time. */
  open: () => Promise<GmdResources>;
  configDigest?: string;
  logger: Logger;
  /** geo_verify facts of this machine (src/config/verify), sent to a peer that verifies. */
  facts?: () => Promise<unknown>;
  /** How long start waits for a peer's answer before calling it unreachable. */
  helloTimeoutMs?: number;
}

export interface GmdStats {
  reads: number; readBytes: number;
  localWrites: number; localWriteBytes: number;
  remoteWrites: number; remoteWriteBytes: number; remoteFailures: number;
  incomingWrites: number; incomingWriteBytes: number;
  resyncBytesSent: number; resyncBytesReceived: number; resyncRegions: number;
  staleMarkings: number;
  /** Async: times in-flight bytes went above the HWM (fell back to MWC-like waiting), writes that
   * waited for admission, and times the remote queue caught up below the HWM again. */
  hwmFallbacks: number; hwmWaits: number; hwmCatchUps: number;
  asyncInflightBytes: number; asyncInflightMax: number;
  rejectedIo: number;
  /** Regions written on both sides that wait for a flush of both volumes before cleaning (clean-gate.ts). */
  unflushedRegions: number;
}

/** Every statistic at zero (a new device). */
export function newStats(): GmdStats {
  return {
    reads: 0, readBytes: 0, localWrites: 0, localWriteBytes: 0, remoteWrites: 0, remoteWriteBytes: 0,
    remoteFailures: 0, incomingWrites: 0, incomingWriteBytes: 0, resyncBytesSent: 0, resyncBytesReceived: 0,
    resyncRegions: 0, staleMarkings: 0, hwmFallbacks: 0, hwmWaits: 0, hwmCatchUps: 0, asyncInflightBytes: 0, asyncInflightMax: 0,
    rejectedIo: 0, unflushedRegions: 0,
  };
}

export interface GmdEvent { time: string; level: 'info' | 'warn' | 'error'; message: string }

export interface GmdStatus {
  name: string; minor: number; machine: string;
  state: GmdState; role: GmdRole | null; mode: GmdMode | null;
  size: number;
  peers: Array<{ machine: string; link: string; active: boolean; downGiven: boolean }>;
  map: { regions: number; clean: number; inconsistent: number; stale: number; crashed: boolean } | null;
  resync: ResyncProgress | null;
  stats: GmdStats;
  attrs: GmdAttributes | null;
  events: GmdEvent[];
}

/**
 * What the GMD needs from the modules below it, as structural types. The real StateMap
 * (src/statemap) and GeoMessage (src/geomessage) satisfy these; keeping the GMD on these narrow
 * shapes documents exactly which calls the mirroring logic relies on.
 */
export interface MapCounts { regions: number; clean: number; inconsistent: number; stale: number }

export interface MapPort {
  readonly regionCount: number;
  readonly crashed: boolean;
  regionRange(offset: number, length: number): [first: number, last: number];
  cell(region: number): number;
  counts(): MapCounts;
  isClean(): boolean;
  beginWrite(first: number, last: number): Promise<void>;
  /** Callback form: true = already durably marked (cb not called), false = cb once marked. */
  beginWriteCb(first: number, last: number, cb: (err?: Error) => void): boolean;
  endWrite(first: number, last: number, outcome: 'both' | 'local-only'): void;
  markStale(first: number, last: number): Promise<void>;
  dirtyRegions(): number[];
  cleanRegion(region: number): void;
  setAll(cell: number): Promise<void>;
  orWith(other: Uint8Array): Promise<void>;
  cells(): Uint8Array;
  flush(): Promise<void>;
  close(): Promise<void>;
}

export interface NetMessage { peer: string; service: number; payload: Buffer; ordered: boolean }
export type NetPayload = Buffer | readonly Buffer[];
export type NetHandler = (msg: NetMessage) => NetPayload | void | Promise<NetPayload | void>;
/** Pool memory for a service's incoming payloads, given back after the handler (GeoMessage's PayloadMemory). */
export interface NetPayloadMemory { take(n: number): Buffer; give(b: Buffer): void }

export interface PeerTransport {
  request(peer: string, service: number, payload: NetPayload, opts?: { ordered?: boolean; timeoutMs?: number }): Promise<Buffer>;
  handle(service: number, handler: NetHandler, opts?: { payloads?: NetPayloadMemory }): void;
  peerState(peer: string): 'up' | 'down' | 'unknown';
  declareDown(peer: string): void;
  on(event: string, listener: (ev: { peer: string; reason?: string }) => void): unknown;
}

import type { Backend } from './backend.js';
import {
  TF_HAS_FLAGS, TF_READ_ONLY, TF_SEND_FLUSH, TF_SEND_FUA, TF_ROTATIONAL, TF_SEND_TRIM,
  TF_SEND_WRITE_ZEROES, TF_SEND_DF, TF_CAN_MULTI_CONN, TF_SEND_CACHE, TF_SEND_FAST_ZERO, DEFAULT_MAX_PAYLOAD,
} from './protocol/constants.js';

/** One export: the name clients ask for, a description for LIST/INFO, and the backend serving it. */
export interface ExportSpec { name: string; description?: string; backend: Backend }

/** Exports by name, with the default ("") export resolved to a named one. */
export class ExportRegistry {
  private readonly byName = new Map<string, ExportSpec>();
  private defaultName: string | undefined;

  constructor(exports: ExportSpec[], defaultExport?: string) {
    for (const e of exports) {
      if (this.byName.has(e.name)) throw new Error(`duplicate NBD export name '${e.name}'`);
      this.byName.set(e.name, e);
    }
    this.defaultName = defaultExport ?? exports[0]?.name;
  }

  add(spec: ExportSpec): void {
    if (this.byName.has(spec.name)) throw new Error(`duplicate NBD export name '${spec.name}'`);
    this.byName.set(spec.name, spec);
    this.defaultName ??= spec.name;
  }

  remove(name: string): ExportSpec | undefined {
    const e = this.byName.get(name);
    this.byName.delete(name);
    if (this.defaultName === name) this.defaultName = undefined;
    return e;
  }

  /** The export for a client-supplied name; "" means the default export. */
  find(name: string): ExportSpec | undefined {
    const e = this.byName.get(name);
    if (e) return e;
    if (name === '' && this.defaultName !== undefined) return this.byName.get(this.defaultName);
    return undefined;
  }

  list(): ExportSpec[] { return [...this.byName.values()]; }
}

/** Block size constraints advertised for an export (NBD_INFO_BLOCK_SIZE), capped by the payload limit. */
export function blockSizesOf(backend: Backend, maxPayload = DEFAULT_MAX_PAYLOAD): { minimum: number; preferred: number; maximum: number } {
  const b = backend.blockSizes?.() ?? { minimum: 1, preferred: 4096, maximum: maxPayload };
  return { minimum: b.minimum, preferred: b.preferred, maximum: Math.min(b.maximum, maxPayload) };
}

/** Transmission flags for an export, given whether structured replies were negotiated. */
export function transmissionFlags(backend: Backend, structured: boolean): number {
  const f = backend.flags();
  let t = TF_HAS_FLAGS | TF_SEND_CACHE;
  if (f.readOnly) t |= TF_READ_ONLY;
  else {
    if (f.canFlush) t |= TF_SEND_FLUSH;
    if (f.canFua) t |= TF_SEND_FUA;
    if (f.canTrim) t |= TF_SEND_TRIM;
    // FAST_ZERO is advertised whenever WRITE_ZEROES is: a backend that cannot zero quickly answers
    // ENOTSUP, which is exactly what the flag asks for.
    if (f.canZero) t |= TF_SEND_WRITE_ZEROES | TF_SEND_FAST_ZERO;
  }
  if (f.rotational) t |= TF_ROTATIONAL;
  if (f.canMultiConn) t |= TF_CAN_MULTI_CONN;
  if (structured) t |= TF_SEND_DF;
  return t;
}

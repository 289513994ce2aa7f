/**
 * The logging interface nbd/ needs. It is a subset of pino's Logger, so the application passes its
 * pino logger unchanged, while nbd/ stays independent of src/.
 */
export type NbdLogFn = (obj: object, msg?: string) => void;
export interface NbdLogger { debug: NbdLogFn; info: NbdLogFn; warn: NbdLogFn; error: NbdLogFn }

const noop: NbdLogFn = () => {};
export const silentNbdLogger: NbdLogger = { debug: noop, info: noop, warn: noop, error: noop };

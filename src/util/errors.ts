/**
 * Errors with a stable `code` (like Node core's `ERR_*`): the message may change, the code may not.
 * Every module throws GeormError (or a subclass) so that the CLI can print the message without a
 * stack and exit with `exitCode`, and scripts can match on `code` rather than text.
 */
export class GeormError extends Error {
  readonly code: string;
  /** Process exit code the CLI uses for this error (default 1). */
  readonly exitCode: number | undefined;
  constructor(code: string, message: string, options?: { cause?: unknown; exitCode?: number }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.exitCode = options?.exitCode;
    this.name = 'GeormError';
  }
}

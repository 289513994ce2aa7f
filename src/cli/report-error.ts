/**
 * How the CLI ends on an error: a message on stderr and an exit code. Its own module so the
 * commands can use it without importing the CLI's entry point (which imports them).
 */

import { CommanderError } from 'commander';
import { GeormError } from '../util/errors.js';

/** Maps an error to a message on stderr and an exit code; never prints a stack for expected errors. */
export function reportError(err: unknown): number {
  if (err instanceof CommanderError) {
    // help and version exit 0; usage errors exit 1 (the seed's "bad switches" code).
    return err.exitCode === 0 ? 0 : 1;
  }
  if (err instanceof GeormError) {
    process.stderr.write(`georm: ${err.message}\n`);
    return err.exitCode ?? 1;
  }
  process.stderr.write(`georm: internal error: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  return 70; // EX_SOFTWARE
}

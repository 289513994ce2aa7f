import { basename } from 'node:path';
import { Command, CommanderError } from 'commander';
import { GeormError } from '../util/errors.js';
import { registerCommands } from './commands/index.js';

/**
 * Runs the CLI and resolves to the process exit code. Invoked as `georm <verb> …`, or through a
 * symlink named after a seed command (`cfggmd`, `krpcstat`, …), in which case the link's name is
 * the verb, so AIX habits keep working.
 */
export async function run(argv: string[]): Promise<number> {
  const invokedAs = basename(argv[1] ?? 'georm').replace(/\.js$/, '');
  const args = invokedAs === 'georm' || invokedAs === 'main' ? argv.slice(2) : [invokedAs, ...argv.slice(2)];

  const program = new Command('georm')
    .description('Geographic mirroring of block devices (GeoRM) for Linux, over NBD and authenticated UDP')
    .showHelpAfterError()
    .exitOverride();
  registerCommands(program);

  try {
    await program.parseAsync(args, { from: 'user' });
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (err) {
    return reportError(err);
  }
}

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

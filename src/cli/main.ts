import { basename } from 'node:path';
import { Command } from 'commander';
import { registerCommands } from './commands/index.js';
import { reportError } from './report-error.js';

export { reportError };

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


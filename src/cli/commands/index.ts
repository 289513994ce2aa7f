import type { Command } from 'commander';

/**
 * Every CLI verb lives in its own module under ./commands and registers itself here, one line each.
 */
export function registerCommands(program: Command): void {
  void program;
}

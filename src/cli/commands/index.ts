import type { Command } from 'commander';
import { register as registerExport } from './export.js';

/**
 * Every CLI verb lives in its own module under ./commands and registers itself here, one line each.
 */
export function registerCommands(program: Command): void {
  registerExport(program);
}

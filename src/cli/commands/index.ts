import type { Command } from 'commander';
import { register as registerExport } from './export.js';
import { register as registerNetstat } from './netstat.js';
import { register as registerWanem } from './wanem.js';
import { register as registerConfig } from './config.js';
import { register as registerInstallUnits } from './install-units.js';
import { register as registerGmd } from './gmd.js';
import { register as registerAix } from './aix.js';
import { register as registerDemo } from './demo.js';
import { register as registerHageo } from './hageo.js';
import { register as registerOcf } from './ocf.js';
import { register as registerOps } from './ops.js';

/**
 * Every CLI verb lives in its own module under ./commands and registers itself here, one line each.
 */
export function registerCommands(program: Command): void {
  registerExport(program);
  registerNetstat(program);
  registerWanem(program);
  registerConfig(program);
  registerInstallUnits(program);
  registerGmd(program);
  registerAix(program);
  registerDemo(program);
  registerHageo(program);
  // After hageo.ts, which creates the `hageo` command: ocf.ts adds its verbs to it.
  registerOcf(program);
  registerOps(program);
}

import type { Command } from 'commander';
import { ConfigError, loadConfig } from '../../config/index.js';

/** `georm config check FILE [--json]`: validate a cluster file; exit 0 when valid, 1 with file:line:col errors. */
export function register(program: Command): void {
  const config = program.command('config').description('work with the cluster configuration file');
  config.command('check')
    .description('validate a cluster configuration file (syntax, schema, cross-references); errors as file:line:col: message')
    .argument('<file>', 'the configuration file (TOML)')
    .option('--json', 'print the result as JSON (the parsed configuration, or the list of errors)')
    .action(async (file: string, opts: { json?: boolean }) => {
      try {
        const cfg = await loadConfig(file);
        if (opts.json) {
          process.stdout.write(`${JSON.stringify({ ok: true, config: cfg }, null, 2)}\n`);
        } else {
          process.stdout.write(`${cfg.source}: ok — cluster '${cfg.cluster.name}': ${cfg.sites.length} sites, ${cfg.machines.length} machines, `
            + `${cfg.networks.length} networks, ${cfg.gmds.length} GMDs (${cfg.gmds.map((g) => `${g.name}/${g.minor}/${g.mode}`).join(', ') || 'none'})\n`);
        }
      } catch (e) {
        if (!(e instanceof ConfigError)) throw e;
        if (opts.json) {
          process.stdout.write(`${JSON.stringify({ ok: false, code: e.code, errors: e.issues }, null, 2)}\n`);
        } else {
          process.stderr.write(`${e.message}\n`);
        }
        process.exitCode = 1;
      }
    });
}

import type { Command } from 'commander';
import { gmdAdmin, type AdminTarget } from '../../gmd/admin.js';
import { loadConfig, findMachine } from '../../gmd/cluster-config.js';
import { defaultMachine } from '../../gmd/runner.js';
import { GeormError } from '../../util/errors.js';
import { defaultConfig } from './gmd.js';

/**
 * The seed's command names (AIX GeoRM), reachable as `georm <name>` or through a link named
 * after the command (`cfggmd -l data10gmd`). Same semantics as the georm verbs; seed-like output.
 */
type Opts = { config: string; machine?: string; json?: boolean; gmd?: string; all?: boolean };

const target = (o: Opts): AdminTarget => ({ config: o.config, ...(o.machine ? { machine: o.machine } : {}), json: !!o.json });

function common(c: Command): Command {
  return c.option('--config <file>', 'cluster configuration file', defaultConfig())
    .option('--machine <name>', 'this machine\'s name (default: hostname)')
    .option('--json', 'machine-readable output');
}

/** The GMDs named by -l, or every GMD of this machine with -A. */
async function selected(o: Opts, cmd: string): Promise<string[]> {
  if (o.gmd && o.all) throw usage(`${cmd}: use either -l <gmd> or -A`);
  if (o.gmd) return [o.gmd];
  if (!o.all) throw usage(`${cmd}: -l <gmd> or -A is required`);
  const cfg = await loadConfig(o.config);
  const machine = defaultMachine(o.machine);
  findMachine(cfg, machine);
  return cfg.gmds.filter((g) => g.machines.some((m) => m.machine === machine)).map((g) => g.name);
}

function usage(msg: string): GeormError { return new GeormError('GEORM_ERR_USAGE', msg, { exitCode: 1 }); }

export function register(program: Command): void {
  const lA = (c: Command) => common(c).option('-l, --gmd <name>', 'the GMD').option('-A, --all', 'every GMD of this machine');

  lA(program.command('cfggmd').description('configure GMDs (DEFINED -> STOPPED)'))
    .action(async (o: Opts) => { for (const g of await selected(o, 'cfggmd')) await gmdAdmin.simple(target(o), g, 'configure', 'Stopped'); });
  lA(program.command('ucfggmd').description('unconfigure GMDs (STOPPED -> DEFINED)'))
    .action(async (o: Opts) => { for (const g of await selected(o, 'ucfggmd')) await gmdAdmin.simple(target(o), g, 'unconfigure', 'Defined'); });
  lA(program.command('startgmd').description('start GMDs (STOPPED -> AVAILABLE)'))
    .action(async (o: Opts) => { for (const g of await selected(o, 'startgmd')) await gmdAdmin.start(target(o), g, []); });
  lA(program.command('stopgmd').description('stop GMDs (AVAILABLE -> STOPPED)'))
    .action(async (o: Opts) => { for (const g of await selected(o, 'stopgmd')) await gmdAdmin.simple(target(o), g, 'stop', 'Stopped'); });
  lA(program.command('gmddown <peer>').description('tell GMDs that a remote peer is down'))
    .action(async (peer: string, o: Opts) => { for (const g of await selected(o, 'gmddown')) await gmdAdmin.down(target(o), g, peer); });
  common(program.command('gmddirty').description('mark a GMD\'s state map all stale')).requiredOption('-l, --gmd <name>', 'the GMD')
    .action(async (o: Opts) => { await gmdAdmin.simple(target(o), o.gmd!, 'dirty', 'state map dirtied'); });
  common(program.command('gmdclean').description('mark a GMD\'s state map all consistent')).requiredOption('-l, --gmd <name>', 'the GMD')
    .action(async (o: Opts) => { await gmdAdmin.simple(target(o), o.gmd!, 'clean', 'state map cleaned'); });

  common(program.command('gmd_show_state').description('show state maps (exit 2 when one is dirty); -D -M FILE dumps, -M FILE -m reads a dump'))
    .option('-l, --gmd <name>', 'the GMD')
    .option('-D, --dump', 'dump a machine-readable map file (with -M)')
    .option('-M, --mapfile <file>', 'map file to write (-D) or read (-m)')
    .option('-m, --readable', 'convert the map file given with -M to readable form')
    .option('-U, --unify', 'preview the unification of the state maps')
    .option('-d, --destination <machine>', 'with -U: the master machine (applies the unification)')
    .option('-V, --preview', 'with -U: preview only (default)')
    .action(async (o: Opts & { dump?: boolean; mapfile?: string; readable?: boolean; unify?: boolean; destination?: string }) => {
      if (o.readable) {
        if (!o.mapfile) throw usage('gmd_show_state: -m needs -M <mapfile>');
        await gmdAdmin.showDump(o.mapfile, !!o.json); return;
      }
      if (!o.gmd) throw usage('gmd_show_state: -l <gmd> is required');
      if (o.unify) {
        await gmdAdmin.unify(target(o), o.gmd, o.destination ?? defaultMachine(o.machine), !o.destination); return;
      }
      if (o.dump && !o.mapfile) throw usage('gmd_show_state: -D needs -M <mapfile>');
      await gmdAdmin.showState(target(o), o.gmd, { local: !!o.dump, ...(o.dump ? { dump: o.mapfile! } : {}) });
    });
  common(program.command('gmd_update_state').description('unify state maps: -U -d MASTER -l GMD'))
    .requiredOption('-l, --gmd <name>', 'the GMD')
    .option('-U, --unify', 'unify (the only operation)')
    .requiredOption('-d, --destination <machine>', 'the master machine')
    .action(async (o: Opts & { unify?: boolean; destination: string }) => {
      if (!o.unify) throw usage('gmd_update_state: -U is required');
      await gmdAdmin.unify(target(o), o.gmd!, o.destination, false);
    });
  common(program.command('geo_verify').description('verify the GeoRM configuration across machines'))
    .option('-l, --gmd <name>', 'only this GMD')
    .action(async (o: Opts) => { await gmdAdmin.verify(target(o), o.gmd); });
  common(program.command('gmdstat').description('GMD statistics (exit 0 ok, 1 bad switches, 2 not available)'))
    .option('-s, --summary', 'summary report')
    .option('-A, --all', 'every GMD of this machine')
    .option('-l, --gmd <name...>', 'GMD(s) to monitor')
    .option('-I, --device <name...>', 'same as -l')
    .option('-i, --interval <sec>', 'seconds between samples', '1')
    .option('-c, --count <n>', 'number of intervals', '1')
    .action(async (o: Opts & { summary?: boolean; gmd?: unknown; device?: string[]; interval: string; count: string }) => {
      const names = [...((o.gmd as string[] | undefined) ?? []), ...(o.device ?? [])];
      if (!o.all && names.length === 0) throw usage('gmdstat: -A or -l <gmd> is required');
      if (o.all && names.length) throw usage('gmdstat: use either -A or -l');
      const interval = Number(o.interval), count = Number(o.count);
      if (!(interval >= 0) || !(count >= 1)) throw usage('gmdstat: -i and -c take positive numbers');
      await gmdAdmin.stat(target(o), o.all ? null : names, { summary: !!o.summary, interval, count });
    });
}

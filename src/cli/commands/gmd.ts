import type { Command } from 'commander';
import { gmdAdmin, type AdminTarget } from '../../gmd/admin.js';
import { runGmd } from '../../gmd/runner.js';
import { GeormError } from '../../util/errors.js';
import { reportError } from '../report-error.js';

/**
 * `georm gmd run` (one process per GMD) and the admin verbs that talk to a running GMD through
 * its control socket: status, start, stop, configure, unconfigure, down, dirty, clean,
 * show-state, unify, update-state, verify, stat, takeover.
 */
export function register(program: Command): void {
  const gmd = program.command('gmd').description('GeoMirror device processes');
  gmd.command('run <name>')
    .description('run one GMD in this process: NBD server, GeoMessage endpoint, control socket (what georm@<gmd>.service runs)')
    .option('--config <file>', 'cluster configuration file', defaultConfig())
    .option('--machine <name>', 'this machine\'s name in the configuration (default: hostname)')
    .option('--start', 'start the GMD (STOPPED -> AVAILABLE) once configured')
    .option('--down <peer...>', 'with --start: gmddown these peers first')
    .option('--defined', 'stay in the DEFINED state (do not open volume and state map)')
    .option('--cluster-managed', 'run under the cluster agent ocf:georm:gmd: start unpromoted, export NBD only once promoted')
    .addHelpText('after', '\nSIGINT/SIGTERM close it cleanly. Started with a Node IPC channel (as `georm demo` starts it), it also\n' +
      'stops when that channel closes, i.e. when the process that started it is gone.\n')
    .action(async (name: string, o: { config: string; machine?: string; start?: boolean; down?: string[]; defined?: boolean; clusterManaged?: boolean }) => {
      const parentGone = watchParent();
      let running: Awaited<ReturnType<typeof runGmd>>;
      try {
        running = await runGmd(name, { config: o.config, ...(o.machine ? { machine: o.machine } : {}), start: !!o.start, down: o.down ?? [], defined: !!o.defined, clusterManaged: !!o.clusterManaged });
      } catch (e) {
        // Sockets opened before the failure would keep the process alive: report and leave.
        process.exit(reportError(e));
      }
      await new Promise<void>((resolve) => {
        let n = 0;
        const onSig = () => {
          if (++n > 1) process.exit(1);
          void running.close().then(resolve, resolve);
        };
        process.on('SIGINT', onSig);
        process.on('SIGTERM', onSig);
        void parentGone.then(() => {
          process.stderr.write(`georm gmd run ${name}: the process that started it is gone (IPC channel closed): stopping\n`);
          onSig();
        });
      });
    });

  const common = (c: Command) => c
    .option('--config <file>', 'cluster configuration file', defaultConfig())
    .option('--machine <name>', 'this machine\'s name (default: hostname)')
    .option('--json', 'machine-readable output');
  const target = (o: { config: string; machine?: string; json?: boolean }): AdminTarget =>
    ({ config: o.config, ...(o.machine ? { machine: o.machine } : {}), json: !!o.json });

  common(program.command('status [gmd]').description('state, role, peer, mode, state map counts and resync progress of GMDs on this machine'))
    .action(async (name: string | undefined, o) => { await gmdAdmin.status(target(o), name); });
  common(program.command('start <gmd>').description('start a GMD (STOPPED -> AVAILABLE), applying the start rules'))
    .option('--down <peer...>', 'gmddown these peers first')
    .action(async (name: string, o) => { await gmdAdmin.start(target(o), name, (o.down as string[] | undefined) ?? []); });
  common(program.command('stop <gmd>').description('stop a GMD (AVAILABLE -> STOPPED)'))
    .action(async (name: string, o) => { await gmdAdmin.simple(target(o), name, 'stop', 'Stopped'); });
  common(program.command('configure <gmd>').description('configure a GMD (DEFINED -> STOPPED)'))
    .action(async (name: string, o) => { await gmdAdmin.simple(target(o), name, 'configure', 'Stopped'); });
  common(program.command('unconfigure <gmd>').description('unconfigure a GMD (STOPPED -> DEFINED)'))
    .action(async (name: string, o) => { await gmdAdmin.simple(target(o), name, 'unconfigure', 'Defined'); });
  common(program.command('down <gmd> <peer>').description('gmddown: tell the GMD its remote peer is down (an AVAILABLE peer is stopped)'))
    .action(async (name: string, peer: string, o) => { await gmdAdmin.down(target(o), name, peer); });
  common(program.command('dirty <gmd>').description('mark every region stale here (initial synchronisation from this side)'))
    .action(async (name: string, o) => { await gmdAdmin.simple(target(o), name, 'dirty', 'state map dirtied'); });
  common(program.command('clean <gmd>').description('mark every region consistent here (dangerous: only when you know both sides are equal)'))
    .action(async (name: string, o) => { await gmdAdmin.simple(target(o), name, 'clean', 'state map cleaned'); });
  common(program.command('show-state <gmd>').description('show the state maps (exit code 2 when a map is dirty)'))
    .option('--local', 'only this machine\'s map')
    .action(async (name: string, o) => { await gmdAdmin.showState(target(o), name, { local: !!o.local }); });
  common(program.command('unify <gmd>').description('resolve divergence: master map := OR of both maps, the other is cleared'))
    .requiredOption('--master <machine>', 'the machine whose data wins')
    .option('--preview', 'show the unified map without changing anything')
    .action(async (name: string, o) => { await gmdAdmin.unify(target(o), name, String(o.master), !!o.preview); });
  common(program.command('update-state <gmd>').description('same as unify (seed: gmd_update_state -U -d MASTER)'))
    .requiredOption('--master <machine>', 'the machine whose data wins')
    .action(async (name: string, o) => { await gmdAdmin.unify(target(o), name, String(o.master), false); });
  common(program.command('takeover <gmd>').description('local takeover: OR a failed machine\'s state map into this one, then clean it'))
    .requiredOption('--map <file>', 'the failed machine\'s state map file')
    .action(async (name: string, o) => { await gmdAdmin.takeover(target(o), name, String(o.map)); });
  common(program.command('verify [gmd]').description('geo_verify: check the configuration across all machines through GeoMessage'))
    .action(async (name: string | undefined, o) => { await gmdAdmin.verify(target(o), name); });
  common(program.command('stat [gmd]').description('gmdstat: device and GeoMessage statistics'))
    .option('-s, --summary', 'summary report')
    .option('-i, --interval <sec>', 'seconds per sample', '1')
    .option('-c, --count <n>', 'number of samples', '1')
    .action(async (name: string | undefined, o) => {
      await gmdAdmin.stat(target(o), name ? [name] : null, { summary: !!o.summary, interval: num(o.interval, 'interval'), count: num(o.count, 'count') });
    });
}

export function defaultConfig(): string {
  return process.env.GEORM_CONFIG ?? '/etc/georm/georm.toml';
}

function num(v: unknown, what: string): number {
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0) throw new GeormError('GEORM_ERR_USAGE', `invalid ${what} '${String(v)}'`, { exitCode: 1 });
  return n;
}

/**
 * Resolves when the parent that spawned this process with an IPC channel (as `georm demo` does)
 * is gone — the channel closes however it died, SIGKILL included — so that a GMD does not run on
 * unowned. Never resolves without a channel (systemd, a shell).
 */
function watchParent(): Promise<void> {
  // `connected` is false (not undefined) when there was a channel that closed already: the parent
  // may die while this process is still loading, before the listener below exists.
  if (process.connected === false) return Promise.resolve();
  if (!process.channel) return new Promise(() => undefined);
  const gone = new Promise<void>((resolve) => process.once('disconnect', resolve));
  // The channel carries no messages: it must not keep this process alive once the GMD closed.
  process.channel.unref();
  return gone;
}

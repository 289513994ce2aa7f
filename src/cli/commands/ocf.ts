import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Command } from 'commander';
import { runAction } from '../../hageo/agent/actions.js';
import { clearOutdated, readOutdated, recordOutdated } from '../../hageo/agent/outdated.js';
import { GeormError } from '../../util/errors.js';
import { defaultMachine } from '../../gmd/runner.js';

/**
 * The cluster agent's verbs: `georm ocf <action>` (what ocf:georm:gmd runs), `georm install-agents`
 * (installs that agent under the OCF root), and `georm hageo fence-peer|unfence-peer` (the cluster's
 * record that a node's copy of a GMD is outdated). The `hageo` command itself may also carry the
 * cluster helper's verbs (cib, corosync-conf): these attach to it when it exists.
 */

/** Repository root (this file runs from dist/src/cli/commands/). */
const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', '..');

export interface InstallAgentsOptions { root?: string; node?: string }

/** Installs scripts/ocf/gmd as <root>/usr/lib/ocf/resource.d/georm/gmd with node's and georm's paths filled in. */
export async function installAgents(opts: InstallAgentsOptions = {}): Promise<string[]> {
  const node = opts.node ?? process.execPath;
  const georm = join(ROOT, 'bin', 'georm.js');
  for (const [k, p] of [['node', node], ['georm', georm]] as const) {
    if (!p.startsWith('/') || /[\s"'$`\\]/.test(p)) throw new GeormError('GEORM_ERR_USAGE', `${k} path must be absolute without white space or shell characters: '${p}'`);
  }
  const text = (await readFile(join(ROOT, 'scripts', 'ocf', 'gmd'), 'utf8')).replaceAll('@NODE@', node).replaceAll('@GEORM@', georm);
  const dir = join(opts.root ?? '/', 'usr/lib/ocf/resource.d/georm');
  const file = join(dir, 'gmd');
  try {
    await mkdir(dir, { recursive: true });
    await writeFile(file, text, { mode: 0o755 });
    await chmod(file, 0o755);
  } catch (e) {
    throw new GeormError('GEORM_ERR_IO', `cannot install the agent in ${dir}: ${(e as Error).message}${opts.root ? '' : ' (run as root, or give --root DIR)'}`, { cause: e });
  }
  return [file];
}

/** The `hageo` command, created here unless another module registered it first. */
function hageoCommand(program: Command): Command {
  return program.commands.find((c) => c.name() === 'hageo') ?? program.command('hageo').description('geographic clustering on Pacemaker + Corosync (HAGEO)');
}

export function register(program: Command): void {
  program.command('ocf <action>')
    .description('run one action of the OCF resource agent ocf:georm:gmd (parameters from OCF_RESKEY_* variables)')
    .addHelpText('after', '\nActions: meta-data validate-all start stop monitor promote demote notify. Exit codes are OCF\'s.\n')
    .action(async (action: string) => { process.exitCode = await runAction(action); });

  program.command('install-agents')
    .description('install the OCF resource agent ocf:georm:gmd under /usr/lib/ocf/resource.d/georm/')
    .option('--root <dir>', 'install below this root (tests, packaging) instead of /')
    .action(async (o: { root?: string }) => {
      const files = await installAgents(o.root ? { root: o.root } : {});
      process.stdout.write(files.map((f) => `installed ${f}`).join('\n') + '\n');
    });

  const hageo = hageoCommand(program);
  hageo.command('fence-peer')
    .description('record in the cluster that PEER\'s copy of GMD is outdated (refused without quorum); its promotion is refused until it is in sync')
    .requiredOption('--gmd <name>', 'the GeoMirror device')
    .requiredOption('--peer <machine>', 'the node whose copy is outdated')
    .option('--machine <name>', 'this machine (recorded as the writer of the record)')
    .action((o: { gmd: string; peer: string; machine?: string }) => {
      const r = recordOutdated(o.gmd, o.peer, defaultMachine(o.machine));
      process.stdout.write(`${o.peer} recorded outdated for ${o.gmd} (${r.value})\n`);
    });
  hageo.command('unfence-peer')
    .description('remove the record that PEER\'s copy of GMD is outdated (done by the agent once the resync completes)')
    .requiredOption('--gmd <name>', 'the GeoMirror device')
    .requiredOption('--peer <machine>', 'the node whose record is removed')
    .option('--force', 'remove it although the copy may be outdated: promoting that node then loses the writes only the other site has')
    .action((o: { gmd: string; peer: string; force?: boolean }) => {
      const rec = readOutdated(o.gmd, o.peer);
      if (!rec) { process.stdout.write(`${o.peer} is not recorded outdated for ${o.gmd}\n`); return; }
      if (!o.force) {
        throw new GeormError('HAGEO_ERR_OUTDATED', `${o.peer} is recorded outdated for ${o.gmd} (${rec.value}); the agent removes the record when the resync to ${o.peer} completes. ` +
          `--force removes it now: if ${o.peer} is then promoted, every write acknowledged by the other site since the record is lost there, and the two copies diverge (georm unify decides when both are back)`);
      }
      clearOutdated(o.gmd, o.peer);
      process.stdout.write(`outdated record of ${o.peer} for ${o.gmd} removed (forced)\n`);
    });
}

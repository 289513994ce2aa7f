import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Command } from 'commander';
import { GeormError } from '../../util/errors.js';
import { parseListen } from '../../ops/metrics-server.js';

/** Repository root (this file runs from dist/src/cli/commands/). */
const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', '..');

export interface InstallUnitsOptions {
  prefix?: string;
  unitDir?: string;
  config?: string;
  stateDir?: string;
  node?: string;
  json?: boolean;
  /** georm-metrics.service: address the Prometheus endpoint serves on, and where the GMD sockets are. */
  metricsListen?: string;
  runDir?: string;
}

/** Default address of `georm metrics` (loopback: expose it deliberately, e.g. --metrics-listen [::]:9947). */
export const DEFAULT_METRICS_LISTEN = '127.0.0.1:9947';

export interface InstalledUnits { files: string[]; unitDir: string; next: string[] }

/** Fills the template's placeholders; the paths must be absolute for systemd. */
export function renderUnit(template: string, v: { node: string; georm: string; config: string; stateDir: string; root: string; runDir?: string }): string {
  for (const [k, p] of Object.entries(v)) {
    if (p === undefined) continue;
    if (!p.startsWith('/')) throw new GeormError('GEORM_ERR_USAGE', `${k} must be an absolute path for systemd, not '${p}'`);
    if (/\s/.test(p)) throw new GeormError('GEORM_ERR_USAGE', `${k} must not contain white space: '${p}'`);
  }
  return template.replaceAll('@NODE@', v.node).replaceAll('@GEORM@', v.georm).replaceAll('@CONFIG@', v.config)
    .replaceAll('@STATEDIR@', v.stateDir).replaceAll('@ROOT@', v.root).replaceAll('@RUNDIR@', v.runDir ?? '/run/georm');
}

export async function installUnits(opts: InstallUnitsOptions): Promise<InstalledUnits> {
  const unitDir = join(opts.prefix ?? '/', opts.unitDir ?? '/etc/systemd/system');
  const template = await readFile(join(ROOT, 'scripts/systemd/georm@.service'), 'utf8');
  const text = renderUnit(template, {
    node: opts.node ?? process.execPath,
    georm: join(ROOT, 'bin/georm.js'),
    config: opts.config ?? '/etc/georm/georm.toml',
    stateDir: opts.stateDir ?? '/var/lib/georm',
    root: ROOT,
  });
  const listen = opts.metricsListen ?? DEFAULT_METRICS_LISTEN;
  parseListen(listen);
  if (/\s/.test(listen)) throw new GeormError('GEORM_ERR_USAGE', `--metrics-listen must not contain white space: '${listen}'`);
  const metricsTemplate = await readFile(join(ROOT, 'scripts/systemd/georm-metrics.service'), 'utf8');
  const metricsText = renderUnit(metricsTemplate, {
    node: opts.node ?? process.execPath, georm: join(ROOT, 'bin/georm.js'), config: opts.config ?? '/etc/georm/georm.toml',
    stateDir: opts.stateDir ?? '/var/lib/georm', root: ROOT, runDir: opts.runDir ?? '/run/georm',
  }).replaceAll('@LISTEN@', listen);
  try {
    await mkdir(unitDir, { recursive: true });
    const file = join(unitDir, 'georm@.service');
    await writeFile(file, text, { mode: 0o644 });
    const metricsFile = join(unitDir, 'georm-metrics.service');
    await writeFile(metricsFile, metricsText, { mode: 0o644 });
    return {
      files: [file, metricsFile],
      unitDir,
      next: opts.prefix ? [] : ['systemctl daemon-reload', 'systemctl enable --now georm@GMD.service   (one per GeoMirror device)',
        `systemctl enable --now georm-metrics.service   (Prometheus endpoint on ${listen})`],
    };
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new GeormError(code === 'EACCES' || code === 'EPERM' || code === 'EROFS' ? 'GEORM_ERR_PERMISSION' : 'GEORM_ERR_IO',
      `cannot write units to ${unitDir}: ${(e as Error).message}${opts.prefix ? '' : ' (run as root, or give --prefix DIR)'}`, { cause: e });
  }
}

export function register(program: Command): void {
  program.command('install-units')
    .description('install the systemd units georm@.service (one instance per GeoMirror device) and georm-metrics.service (Prometheus endpoint)')
    .option('--prefix <dir>', 'install under this root (packaging, tests) instead of /')
    .option('--unit-dir <dir>', 'unit directory below the prefix', '/etc/systemd/system')
    .option('--config <file>', 'cluster configuration the units run with', '/etc/georm/georm.toml')
    .option('--state-dir <dir>', 'where volumes and state maps live (mounted before, unmounted after the GMD)', '/var/lib/georm')
    .option('--metrics-listen <host:port>', 'address georm-metrics.service serves Prometheus on', DEFAULT_METRICS_LISTEN)
    .option('--run-dir <dir>', 'run directory of the GMDs (their control sockets), read by georm-metrics.service', '/run/georm')
    .option('--json', 'print what was installed as JSON')
    .addHelpText('after', '\nThen: systemctl daemon-reload && systemctl enable --now georm@data10gmd\n' +
      'Filesystems on /dev/nbdN: add x-systemd.requires=georm@GMD.service to their fstab options so they\n' +
      'are unmounted before the GMD stops.')
    .action(async (opts: InstallUnitsOptions) => {
      const r = await installUnits(opts);
      if (opts.json) process.stdout.write(`${JSON.stringify(r)}\n`);
      else process.stdout.write([...r.files.map((f) => `installed ${f}`), ...r.next.map((n) => `next: ${n}`)].join('\n') + '\n');
    });
}

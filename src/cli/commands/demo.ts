import type { Command } from 'commander';
import { launchDemo } from '../../gmd/demo.js';
import { parseSize } from '../../util/size.js';
import { GeormError } from '../../util/errors.js';
import { isMode } from '../../config/vocabulary.js';

/**
 * A second signal of the same kind this soon after the first is the same request delivered twice:
 * timeout(1) signals its command and then the command's process group, which holds it too.
 */
const DUPLICATE_MS = 300;

/** `georm demo`: the embedded two-site mirror on loopback (`npm start`). */
export function register(program: Command): void {
  program.command('demo')
    .description('run a two-machine, two-site GeoMirror device on loopback; prints one JSON line (NBD URI, volumes, config) and runs until SIGINT/SIGTERM')
    .option('--dir <dir>', 'where volumes, state maps, config and logs go (default: a new temporary directory)')
    .option('--mode <mode>', 'sync | mwc | async', 'mwc')
    .option('--size <size>', 'device size (512, 64K, 256M, 256MiB, 1G, 1GiB)', '256M')
    .option('--sync-rate <size>', 'resync request size', '256K')
    .option('--hwm <size>', 'async high water mark', '128K')
    .addHelpText('after', '\nSIGINT/SIGTERM (also during start-up) stop the primary, then the secondary: control stop, SIGTERM,\n' +
      'SIGKILL after 5 s. A second, later signal SIGKILLs them at once. The demo exits only once both\n' +
      'processes have ended: 0 if they stopped cleanly, 1 with the reasons on stderr otherwise. If the\n' +
      'demo itself is killed, its processes notice (their IPC channel closes) and stop by themselves.\n')
    .action(async (o: { dir?: string; mode: string; size: string; syncRate: string; hwm: string }) => {
      if (!isMode(o.mode)) throw new GeormError('GEORM_ERR_USAGE', `invalid --mode '${o.mode}': expected sync, mwc or async`, { exitCode: 1 });
      const size = parseSize(o.size, '--size');
      if (size < 65536 || size % 512) throw new GeormError('GEORM_ERR_USAGE', `--size must be at least 64K and a multiple of 512`, { exitCode: 1 });
      const say = (l: string) => process.stderr.write(`${l}\n`);
      const demo = launchDemo({
        ...(o.dir ? { dir: o.dir } : {}), mode: o.mode, size, syncRate: o.syncRate, hwm: o.hwm, log: say,
        onUnexpectedExit: (what) => { say(`demo: ${what}; stopping`); void demo.stop(); },
      });
      // Installed before anything is spawned (launchDemo spawns in a later tick): a signal during
      // start-up must stop what was started, not end this process with its children left running.
      let first: { sig: string; at: number } | undefined;
      const onSig = (sig: NodeJS.Signals) => {
        if (!first) {
          first = { sig, at: Date.now() };
          say(`demo: ${sig}: stopping (primary first)`);
          void demo.stop();
        } else if (sig !== first.sig || Date.now() - first.at >= DUPLICATE_MS) {
          say(`demo: ${sig} again: killing the GMD processes (SIGKILL)`);
          void demo.kill();
        }
      };
      process.on('SIGINT', onSig);
      process.on('SIGTERM', onSig);

      let startError: unknown;
      try {
        process.stdout.write(JSON.stringify(await demo.ready) + '\n');
      } catch (e) {
        if (!(e instanceof GeormError && e.code === 'DEMO_ERR_INTERRUPTED')) startError = e;
      }
      // Until a signal or an unexpected exit asks for the stop; resolves only once it is done.
      const report = await demo.finished;
      for (const p of report.problems) say(`demo: ${p}`);
      if (startError) throw startError;
      if (!report.clean) throw new GeormError('DEMO_ERR_STOP', `the demo did not stop cleanly (see above)`, { exitCode: 1 });
      say('demo: stopped');
    });
}

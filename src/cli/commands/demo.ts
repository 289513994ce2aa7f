import type { Command } from 'commander';
import { fstatSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import type { Server } from 'node:net';
import { launchDemo } from '../../gmd/demo.js';
import { demoCommandLine, DEMO_HELP } from '../../gmd/demo-commands.js';
import { watchDemo } from '../../gmd/demo-events.js';
import { callControl, serveControl } from '../../gmd/control.js';
import { parseSize } from '../../util/size.js';
import { GeormError } from '../../util/errors.js';
import { isMode } from '../../config/vocabulary.js';

/**
 * A second signal of the same kind this soon after the first is the same request delivered twice:
 * timeout(1) signals its command and then the command's process group, which holds it too.
 */
const DUPLICATE_MS = 300;

/** The demo's control socket, where `georm demo ctl DIR CMD` sends its commands. */
export function demoControlPath(dir: string): string {
  return join(dir, 'demo.sock');
}

/** Commands are read on stdin when it is a terminal or a pipe, never from /dev/null or a file. */
function stdinTakesCommands(): boolean {
  if (process.stdin.isTTY) return true;
  try {
    const st = fstatSync(0);
    return st.isFIFO() || st.isSocket();
  } catch { return false; }
}

/** `georm demo`: the embedded two-site mirror on loopback (`npm start`). */
export function register(program: Command): void {
  const demoCmd = program.command('demo');
  demoCmd.command('ctl <dir> <command...>')
    .description("send a rehearsal command to the demo running in DIR (e.g. 'kill secondary'; 'help' lists them)")
    .action(async (dir: string, words: string[]) => {
      const path = demoControlPath(dir);
      const r = await callControl(path, 'command', { line: words.join(' ') }, 60000).catch((e: unknown) => {
        const why = e instanceof GeormError && e.code === 'GMD_ERR_NOT_RUNNING' ? `nothing listens on ${path}` : (e as Error).message;
        throw new GeormError('DEMO_ERR_CTL', `no demo answers in ${dir}: ${why} (start one with 'georm demo --dir ${dir}')`, { exitCode: 2 });
      }) as { lines: string[]; ok: boolean };
      for (const l of r.lines) process.stdout.write(`${l}\n`);
      if (!r.ok) process.exitCode = 1;
    });
  demoCmd
    .description('run a two-machine, two-site GeoMirror device on loopback; prints one JSON line (NBD URI, volumes, config) and runs until SIGINT/SIGTERM')
    .option('--dir <dir>', 'where volumes, state maps, config and logs go (default: a new temporary directory)')
    .option('--mode <mode>', 'sync | mwc | async', 'mwc')
    .option('--size <size>', 'device size (512, 64K, 256M, 256MiB, 1G, 1GiB)', '256M')
    .option('--sync-rate <size>', 'resync request size', '256K')
    .option('--hwm <size>', 'async high water mark', '128K')
    .option('--promote-failure-timeout <s>', 'seconds without an answer before a machine gives its peer down (writes then go on, marked stale)', '10')
    .addHelpText('after', '\nSIGINT/SIGTERM (also during start-up) stop the primary, then the secondary: control stop, SIGTERM,\n' +
      'SIGKILL after 5 s. A second, later signal SIGKILLs them at once. The demo exits only once both\n' +
      'processes have ended: 0 if they stopped cleanly, 1 with the reasons on stderr otherwise. If the\n' +
      'demo itself is killed, its processes notice (their IPC channel closes) and stop by themselves.\n' +
      '\nOnce up, the demo reads rehearsal commands on stdin (a terminal or a pipe) and from\n' +
      "'georm demo ctl DIR COMMAND', and prints on stderr what the GMDs report as it happens.\n" +
      DEMO_HELP.join('\n') + '\n')
    .action(async (o: { dir?: string; mode: string; size: string; syncRate: string; hwm: string; promoteFailureTimeout: string }) => {
      if (!isMode(o.mode)) throw new GeormError('GEORM_ERR_USAGE', `invalid --mode '${o.mode}': expected sync, mwc or async`, { exitCode: 1 });
      const size = parseSize(o.size, '--size');
      if (size < 65536 || size % 512) throw new GeormError('GEORM_ERR_USAGE', `--size must be at least 64K and a multiple of 512`, { exitCode: 1 });
      const pft = Number(o.promoteFailureTimeout);
      if (!(Number.isInteger(pft) && pft >= 1 && pft <= 3600)) throw new GeormError('GEORM_ERR_USAGE', `--promote-failure-timeout must be whole seconds, 1..3600`, { exitCode: 1 });
      const say = (l: string) => process.stderr.write(`${l}\n`);
      let stopWatching: (() => void) | undefined;
      const demo = launchDemo({
        ...(o.dir ? { dir: o.dir } : {}), mode: o.mode, size, syncRate: o.syncRate, hwm: o.hwm, promoteFailureTimeout: pft, log: say,
        // A rehearsal goes on when a process dies: the user can restart it (the stop report keeps it).
        onUnexpectedExit: (what) => say(`demo: ${what}; the demo goes on ('restart primary|secondary' starts it again)`),
      });
      // Installed before anything is spawned (launchDemo spawns in a later tick): a signal during
      // start-up must stop what was started, not end this process with its children left running.
      let first: { sig: string; at: number } | undefined;
      const onSig = (sig: NodeJS.Signals) => {
        if (!first) {
          first = { sig, at: Date.now() };
          stopWatching?.();
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
      let ctl: Server | undefined;
      let ctlPath: string | undefined;
      let stdinReader: ReturnType<typeof createInterface> | undefined;
      try {
        const info = await demo.ready;
        process.stdout.write(JSON.stringify(info) + '\n');
        // What a rehearsal needs, once the demo is up (and not when a signal already stops it).
        if (!first) {
          const r = demo.rehearsal;
          stopWatching = watchDemo(r, say);
          const run = async (line: string) => {
            const lines = await demoCommandLine(r, line);
            for (const l of lines) say(`demo> ${l}`);
            return { lines, ok: !lines.some((l) => l.startsWith('error: ')) };
          };
          ctlPath = demoControlPath(info.dir);
          ctl = await serveControl(ctlPath, async (op, args) => {
            if (op !== 'command' || typeof args.line !== 'string') throw new GeormError('DEMO_ERR_COMMAND', `unknown request '${op}'`);
            say(`demo> ${args.line} (from demo ctl)`);
            return run(args.line);
          });
          if (stdinTakesCommands()) {
            // terminal: false keeps a terminal in cooked mode, so Ctrl-C stays a SIGINT (above).
            stdinReader = createInterface({ input: process.stdin, terminal: false });
            // One command at a time, in order: a restart must finish before the next kill.
            let chain = Promise.resolve();
            stdinReader.on('line', (line) => { chain = chain.then(() => run(line)).then(() => undefined); });
          }
          // A signal during the lines above already stops the demo: no invitation then.
          if (!first) say("demo: ready for commands on stdin or 'georm demo ctl DIR COMMAND' (type 'help')");
          else stopWatching?.();
        }
      } catch (e) {
        if (!(e instanceof GeormError && e.code === 'DEMO_ERR_INTERRUPTED')) startError = e;
      }
      void demo.finished.then(() => {
        stopWatching?.();
        if (stdinReader) { stdinReader.close(); process.stdin.destroy(); }
        ctl?.close();
      });
      // Until a signal or an unexpected exit asks for the stop; resolves only once it is done.
      const report = await demo.finished;
      for (const p of report.problems) say(`demo: ${p}`);
      if (startError) throw startError;
      if (!report.clean) throw new GeormError('DEMO_ERR_STOP', `the demo did not stop cleanly (see above)`, { exitCode: 1 });
      say('demo: stopped');
    });
}

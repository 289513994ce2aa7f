import type { Command } from 'commander';
import { startDemo } from '../../gmd/demo.js';
import { parseSize } from '../../util/size.js';
import { GeormError } from '../../util/errors.js';
import { isMode } from '../../config/vocabulary.js';

/** `georm demo`: the embedded two-site mirror on loopback (`npm start`). */
export function register(program: Command): void {
  program.command('demo')
    .description('run a two-machine, two-site GeoMirror device on loopback; prints one JSON line (NBD URI, volumes, config) and runs until SIGINT/SIGTERM')
    .option('--dir <dir>', 'where volumes, state maps, config and logs go (default: a new temporary directory)')
    .option('--mode <mode>', 'sync | mwc | async', 'mwc')
    .option('--size <size>', 'device size (512, 64K, 256M, 256MiB, 1G, 1GiB)', '256M')
    .option('--sync-rate <size>', 'resync request size', '256K')
    .option('--hwm <size>', 'async high water mark', '128K')
    .action(async (o: { dir?: string; mode: string; size: string; syncRate: string; hwm: string }) => {
      if (!isMode(o.mode)) throw new GeormError('GEORM_ERR_USAGE', `invalid --mode '${o.mode}': expected sync, mwc or async`, { exitCode: 1 });
      const size = parseSize(o.size, '--size');
      if (size < 65536 || size % 512) throw new GeormError('GEORM_ERR_USAGE', `--size must be at least 64K and a multiple of 512`, { exitCode: 1 });
      const demo = await startDemo({
        ...(o.dir ? { dir: o.dir } : {}), mode: o.mode, size, syncRate: o.syncRate, hwm: o.hwm,
        log: (l) => process.stderr.write(`${l}\n`),
      });
      process.stdout.write(JSON.stringify(demo.info) + '\n');
      await new Promise<void>((resolve) => {
        let n = 0;
        const onSig = (sig: string) => {
          if (++n > 1) process.exit(1);
          process.stderr.write(`demo: ${sig}: stopping (primary first)\n`);
          void demo.stop().then(resolve, resolve);
        };
        process.on('SIGINT', () => onSig('SIGINT'));
        process.on('SIGTERM', () => onSig('SIGTERM'));
        for (const c of demo.children) c.on('exit', (code) => { if (n === 0) { process.stderr.write(`demo: a GMD process exited (${code}); stopping\n`); onSig('child exit'); } });
      });
    });
}

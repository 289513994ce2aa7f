import { basename } from 'node:path';
import { stat, open } from 'node:fs/promises';
import { Command, Option } from 'commander';
import { NbdServer, FileBackend, nbdUri, transmissionFlags } from '../../../nbd/index.js';
import { attachExport, parseAttachTimeout } from '../../native/attach.js';
import { nativeFileExtensions } from '../../native/extensions.js';
import { GeormError } from '../../util/errors.js';
import { createLogger } from '../../util/log.js';
import { parseSize, formatSize } from '../../util/size.js';

export interface ExportOptions {
  listen: string[];
  name?: string;
  description?: string;
  readOnly?: boolean;
  size?: string;
  json?: boolean;
  /** /dev/nbdN to attach the export to through the native addon. */
  attach?: string;
  attachTimeout?: string;
}

/**
 * `georm export FILE`: a plain NBD export of a file or block device, no mirroring (our equivalent of
 * `nbdkit file`, and the performance baseline for the GeoMirror device).
 */
export function register(program: Command): void {
  program.command('export')
    .description('serve a file or block device over NBD (no mirroring)')
    .argument('<file>', 'regular file or block device to export')
    .addOption(new Option('-l, --listen <address>', 'tcp://HOST:PORT or unix:PATH (repeatable)')
      .argParser((v: string, prev: string[] | undefined) => [...(prev ?? []), v]))
    .option('-n, --name <name>', 'export name (default: the file name); the export is also the default export ""')
    .option('-d, --description <text>', 'description shown to clients (nbdinfo)')
    .option('-r, --read-only', 'refuse writes (EPERM)')
    .option('-s, --size <size>', 'create FILE as a sparse file of this size if it does not exist (512, 64K, 1G, 1GiB)')
    .option('--json', 'print the startup line as JSON')
    .option('-a, --attach <device>', 'also attach the export to a kernel NBD device, e.g. /dev/nbd0 (root; modprobe nbd)')
    .option('--attach-timeout <seconds>', 'seconds before the kernel fails unanswered I/O on the attached device', '60')
    .addHelpText('after', '\nPrints one line with the NBD URI once listening; SIGINT/SIGTERM stop it cleanly.\n' +
      'Example: georm export /var/lib/disk.img --listen unix:/run/disk.sock --name disk')
    .action(async (file: string, opts: ExportOptions) => {
      const running = await startExport(file, { ...opts, listen: opts.listen ?? (opts.attach ? [] : ['tcp://127.0.0.1:10809']) });
      process.stdout.write(opts.json ? `${JSON.stringify(running.info)}\n` : `${running.info.uri}\n`);
      await waitForSignal();
      await running.stop();
    });
}

export interface RunningExport {
  info: { uri: string; uris: string[]; name: string; path: string; size: number; readOnly: boolean; device?: string };
  server: NbdServer;
  stop(): Promise<void>;
}

/** Opens the file, starts the server on every listen address; throws GeormError with a stable code. */
export async function startExport(file: string, opts: ExportOptions): Promise<RunningExport> {
  if (opts.size !== undefined) await createIfMissing(file, parseSize(opts.size, 'export size'));
  let backend: FileBackend;
  try {
    backend = await FileBackend.open(file, { readOnly: !!opts.readOnly, extensions: nativeFileExtensions() });
  } catch (e) {
    throw openError(file, e);
  }
  if (backend.size() === 0) {
    await backend.close();
    throw new GeormError('GEORM_ERR_BAD_SIZE', `${file} is empty (0 bytes): nothing to export; give --size to create it, or grow it first`);
  }
  const name = opts.name ?? basename(file);
  const logger = createLogger('georm-export');
  const server = new NbdServer({
    exports: [{ name, backend, ...(opts.description !== undefined ? { description: opts.description } : {}) }],
    defaultExport: name,
    logger,
  });
  const uris: string[] = [];
  let attached: { detach(): Promise<void> } | undefined;
  try {
    for (const l of opts.listen) {
      let r;
      try {
        r = await server.listen(l);
      } catch (e) {
        throw listenError(l, e);
      }
      uris.push(nbdUri(r.target, name));
    }
    if (opts.attach) {
      attached = attachExport(opts.attach, parseAttachTimeout(opts.attachTimeout), backend.size(), transmissionFlags(backend, false),
        (s) => server.serveSocket(s, name), logger);
    }
  } catch (e) {
    await server.close();
    await backend.close();
    throw e;
  }
  return {
    info: { uri: uris[0] ?? opts.attach!, uris, name, path: file, size: backend.size(), readOnly: !!opts.readOnly, ...(opts.attach ? { device: opts.attach } : {}) },
    server,
    async stop() {
      await attached?.detach();
      await server.close();
      await backend.close();
      logger.info({ name }, 'export stopped');
    },
  };
}

async function createIfMissing(file: string, size: number): Promise<void> {
  if (size === 0) throw new GeormError('GEORM_ERR_BAD_SIZE', 'export size must be greater than 0');
  const st = await stat(file).catch(() => undefined);
  if (st) {
    if (st.isFile() && st.size !== size) {
      throw new GeormError('GEORM_ERR_BAD_SIZE', `${file} exists with size ${formatSize(st.size)}, not ${formatSize(size)}; drop --size or resize it`);
    }
    return;
  }
  try {
    const fh = await open(file, 'wx');
    await fh.truncate(size);
    await fh.close();
  } catch (e) {
    throw openError(file, e);
  }
}

function openError(file: string, e: unknown): GeormError {
  const code = (e as { code?: string }).code;
  if (code === 'ENOENT') return new GeormError('GEORM_ERR_NOT_FOUND', `${file}: no such file or device (use --size SIZE to create a sparse file)`, { cause: e });
  if (code === 'EACCES' || code === 'EPERM' || code === 'EROFS') {
    return new GeormError('GEORM_ERR_PERMISSION', `${file}: permission denied${code === 'EROFS' ? ' (read-only file system; try --read-only)' : ''}`, { cause: e });
  }
  if (code === 'EISDIR') return new GeormError('GEORM_ERR_BAD_FILE', `${file} is a directory`, { cause: e });
  if (code === 'EBUSY') return new GeormError('GEORM_ERR_BUSY', `${file} is in use`, { cause: e });
  return new GeormError('GEORM_ERR_BAD_FILE', `${file}: ${(e as Error).message}`, { cause: e });
}

function listenError(target: string, e: unknown): GeormError {
  const code = (e as { code?: string }).code;
  if (code === 'EADDRINUSE') return new GeormError('GEORM_ERR_ADDR_IN_USE', `cannot listen on ${target}: address already in use (another NBD server?)`, { cause: e });
  if (code === 'EACCES') return new GeormError('GEORM_ERR_PERMISSION', `cannot listen on ${target}: permission denied`, { cause: e });
  if (code === 'EADDRNOTAVAIL' || code === 'ENOTFOUND') return new GeormError('GEORM_ERR_BAD_ADDRESS', `cannot listen on ${target}: address not available on this machine`, { cause: e });
  return new GeormError('GEORM_ERR_BAD_ADDRESS', `cannot listen on ${target}: ${(e as Error).message}`, { cause: e });
}

function waitForSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const on = (sig: NodeJS.Signals) => {
      process.off('SIGINT', on);
      process.off('SIGTERM', on);
      resolve(sig);
    };
    process.on('SIGINT', on);
    process.on('SIGTERM', on);
  });
}

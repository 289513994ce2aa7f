/**
 * Test harness for the NBD server: a real NbdServer on real sparse files in a temp dir, reached over
 * a unix socket (and TCP port 0 when asked), plus a raw socket client for what libnbd cannot send.
 */
import net from 'node:net';
import { once } from 'node:events';
import { closeSync, openSync, ftruncateSync } from 'node:fs';
import { join } from 'node:path';
import { NbdServer, FileBackend, type FileExtensions, type NbdLogger } from '../../nbd/index.js';
import { tempDir } from '../helpers/env.js';

export interface LogLine { level: string; obj: object; msg?: string | undefined }

export interface Harness {
  dir: string;
  server: NbdServer;
  /** nbd+unix URI of the named export ('' = default export). */
  uri(name?: string): string;
  socketPath: string;
  tcpUri?: string;
  files: Record<string, string>;
  backends: Record<string, FileBackend>;
  logs: LogLine[];
  close(): Promise<void>;
}

export interface HarnessOptions {
  /** export name → size in bytes (the first is the default export). */
  exports?: Record<string, number>;
  readOnly?: string[];
  tcp?: boolean;
  extensions?: FileExtensions;
  /** NbdServerOptions.userBufferReads (default: the server's default). */
  userBufferReads?: boolean;
}

export function sparseFile(path: string, size: number): void {
  const fd = openSync(path, 'w');
  ftruncateSync(fd, size);
  closeSync(fd);
}

export async function startHarness(opts: HarnessOptions = {}): Promise<Harness> {
  const { dir, cleanup } = tempDir('georm-nbd-');
  const logs: LogLine[] = [];
  const mk = (level: string) => (obj: object, msg?: string) => { logs.push({ level, obj, msg }); };
  const logger: NbdLogger = { debug: mk('debug'), info: mk('info'), warn: mk('warn'), error: mk('error') };
  const exportsSpec = opts.exports ?? { disk: 64 * 1024 * 1024 };
  const files: Record<string, string> = {};
  const backends: Record<string, FileBackend> = {};
  for (const [name, size] of Object.entries(exportsSpec)) {
    files[name] = join(dir, `${name}.img`);
    sparseFile(files[name]!, size);
    backends[name] = await FileBackend.open(files[name]!, {
      readOnly: opts.readOnly?.includes(name) ?? false,
      ...(opts.extensions ? { extensions: opts.extensions } : {}),
    });
  }
  const server = new NbdServer({
    exports: Object.keys(exportsSpec).map((name) => ({ name, description: `test export ${name}`, backend: backends[name]! })),
    logger,
    ...(opts.userBufferReads !== undefined ? { userBufferReads: opts.userBufferReads } : {}),
  });
  const socketPath = join(dir, 'nbd.sock');
  await server.listen(`unix:${socketPath}`);
  let tcpUri: string | undefined;
  if (opts.tcp) tcpUri = (await server.listen('tcp://127.0.0.1:0')).uri;
  return {
    dir, server, socketPath, files, backends, logs,
    ...(tcpUri ? { tcpUri } : {}),
    uri: (name = '') => `nbd+unix:///${name}?socket=${socketPath}`,
    async close() {
      await server.close(2000);
      for (const b of Object.values(backends)) await b.close();
      cleanup();
    },
  };
}

/** A raw NBD client socket with exact-length reads, for malformed and unsupported traffic. */
export class RawClient {
  private buf = Buffer.alloc(0);
  private ended = false;
  private waiter: (() => void) | undefined;

  private constructor(readonly socket: net.Socket) {
    socket.on('data', (d: Buffer) => { this.buf = Buffer.concat([this.buf, d]); this.waiter?.(); });
    socket.on('end', () => { this.ended = true; this.waiter?.(); });
    socket.on('close', () => { this.ended = true; this.waiter?.(); });
    socket.on('error', () => { this.ended = true; this.waiter?.(); });
  }

  static async connect(path: string): Promise<RawClient> {
    const s = net.connect(path);
    await once(s, 'connect');
    return new RawClient(s);
  }

  write(b: Buffer): void { if (!this.socket.destroyed) this.socket.write(b); }

  /** Reads exactly n bytes; rejects on EOF or timeout. */
  async read(n: number, timeoutMs = 5000): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (this.buf.length < n) {
      if (this.ended) throw new Error(`EOF after ${this.buf.length} of ${n} bytes`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timeout reading ${n} bytes`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiter = () => { clearTimeout(t); this.waiter = undefined; resolve(); };
      });
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }

  /** Resolves true when the server closes the connection within the timeout (after any pending bytes). */
  async closedByServer(timeoutMs = 5000): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!this.ended) {
      const left = deadline - Date.now();
      if (left <= 0) return false;
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiter = () => { clearTimeout(t); this.waiter = undefined; resolve(); };
      });
    }
    return true;
  }

  get pending(): number { return this.buf.length; }

  destroy(): void { this.socket.destroy(); }
}

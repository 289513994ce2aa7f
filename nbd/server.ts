import net from 'node:net';
import { stat, unlink } from 'node:fs/promises';
import { NbdConnection, type ConnectionContext } from './connection.js';
import { ExportRegistry, type ExportSpec } from './exports.js';
import { silentNbdLogger, type NbdLogger } from './log.js';
import { DEFAULT_MAX_PAYLOAD, NBD_DEFAULT_PORT } from './protocol/constants.js';

export interface NbdServerOptions {
  exports: ExportSpec[];
  /** Name of the export served for the empty name ""; defaults to the first export. */
  defaultExport?: string;
  logger?: NbdLogger;
  /** Largest READ/WRITE payload accepted (default 32 MiB); larger WRITEs end the connection. */
  maxPayload?: number;
  /**
   * Read accepted sockets into one reused buffer per connection (default true, or
   * GEORM_NBD_ONREAD=0 for false): no allocation per socket read. False uses plain 'data' events.
   */
  userBufferReads?: boolean;
}

export type ListenTarget = { kind: 'tcp'; host: string; port: number } | { kind: 'unix'; path: string };

/** Parses `tcp://HOST:PORT`, `tcp://[v6]:PORT`, `HOST:PORT`, `unix:PATH`, `nbd+unix:` style `unix://PATH`. */
export function parseListenTarget(target: string): ListenTarget {
  if (target.startsWith('unix:')) {
    const path = target.slice(5).replace(/^\/\//, '');
    if (!path) throw new Error(`invalid listen address '${target}': unix socket path is empty`);
    return { kind: 'unix', path };
  }
  const rest = target.startsWith('tcp://') ? target.slice(6) : target;
  const m = /^(?:\[([^\]]+)\]|([^:/]*))(?::(\d+))?\/?$/.exec(rest);
  if (!m) throw new Error(`invalid listen address '${target}': expected tcp://HOST:PORT or unix:PATH`);
  const host = m[1] ?? (m[2] || '127.0.0.1');
  const port = m[3] === undefined ? NBD_DEFAULT_PORT : Number(m[3]);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`invalid listen address '${target}': bad port`);
  return { kind: 'tcp', host, port };
}

/** The NBD URI clients use for a bound address. */
export function nbdUri(t: ListenTarget, exportName = ''): string {
  if (t.kind === 'unix') return `nbd+unix:///${encodeURIComponent(exportName)}?socket=${t.path}`;
  const host = t.host.includes(':') ? `[${t.host}]` : t.host;
  return `nbd://${host}:${t.port}/${encodeURIComponent(exportName)}`;
}

/**
 * An NBD server: any number of listeners (TCP and unix sockets) and clients, serving a map of
 * exports. Protocol violations end only the offending connection.
 */
export class NbdServer {
  private readonly registry: ExportRegistry;
  private readonly ctx: ConnectionContext;
  private readonly servers: Array<{ server: net.Server; target: ListenTarget }> = [];
  private readonly conns = new Set<NbdConnection>();
  private closing = false;
  private readonly userBufferReads: boolean;
  private warnedNoUserBuffer = false;

  constructor(opts: NbdServerOptions) {
    this.userBufferReads = opts.userBufferReads ?? process.env.GEORM_NBD_ONREAD !== '0';
    this.registry = new ExportRegistry(opts.exports, opts.defaultExport);
    this.ctx = { registry: this.registry, log: opts.logger ?? silentNbdLogger, maxPayload: opts.maxPayload ?? DEFAULT_MAX_PAYLOAD };
  }

  get connections(): number { return this.conns.size; }

  addExport(spec: ExportSpec): void { this.registry.add(spec); }
  removeExport(name: string): void { this.registry.remove(name); }

  /** Listens on `tcp://HOST:PORT` (port 0 = any) or `unix:PATH`; resolves with the URI of the default export. */
  async listen(target: string): Promise<{ uri: string; target: ListenTarget }> {
    const t = parseListenTarget(target);
    const server = net.createServer({ allowHalfOpen: true, noDelay: true, pauseOnConnect: true }, (s) => this.accept(s));
    if (t.kind === 'unix') await removeStaleSocket(t.path);
    await new Promise<void>((resolve, reject) => {
      const onError = (err: Error) => reject(err);
      server.once('error', onError);
      const done = () => { server.off('error', onError); resolve(); };
      if (t.kind === 'unix') server.listen(t.path, done);
      else server.listen(t.port, t.host, done);
    });
    server.on('error', (err) => this.ctx.log.error({ err: err.message }, 'nbd listener error'));
    let bound: ListenTarget = t;
    if (t.kind === 'tcp') {
      const a = server.address() as net.AddressInfo;
      bound = { kind: 'tcp', host: t.host, port: a.port };
    }
    this.servers.push({ server, target: bound });
    this.ctx.log.info({ listen: nbdUri(bound) }, 'nbd server listening');
    return { uri: nbdUri(bound), target: bound };
  }

  private accept(socket: net.Socket): void {
    if (this.closing) { socket.destroy(); return; }
    const adopted = this.userBufferReads ? adoptWithUserBuffer(socket) : undefined;
    if (this.userBufferReads && !adopted && !this.warnedNoUserBuffer) {
      // Net's internals changed under us (a new Node): the data path still works, only slower; say so once.
      this.warnedNoUserBuffer = true;
      this.ctx.log.warn({ node: process.version }, "nbd: this Node's sockets cannot be read into a reused buffer (onread); using 'data' events");
    }
    if (adopted) {
      const c = new NbdConnection(adopted.socket, this.ctx, (x) => this.conns.delete(x), undefined, true);
      adopted.deliver(c);
      this.conns.add(c);
      return;
    }
    const c = new NbdConnection(socket, this.ctx, (x) => this.conns.delete(x));
    this.conns.add(c);
    socket.resume();
  }

  /** Serves one connected socket in the transmission phase directly (kernel attach via socketpair). */
  serveSocket(socket: net.Socket, exportName: string): void {
    const exp = this.registry.find(exportName);
    if (!exp) throw new Error(`unknown NBD export '${exportName}'`);
    const c = new NbdConnection(socket, this.ctx, (x) => this.conns.delete(x), { exp, structured: false, baseAllocation: false });
    this.conns.add(c);
  }

  /** Stops listening, lets in-flight requests finish (up to `graceMs`), then closes every client. */
  async close(graceMs = 5000): Promise<void> {
    this.closing = true;
    const closes = this.servers.map(({ server, target }) => new Promise<void>((resolve) => {
      server.close(() => resolve());
      if (target.kind === 'unix') void unlink(target.path).catch(() => {});
    }));
    for (const c of this.conns) c.shutdown();
    const deadline = Date.now() + graceMs;
    while (this.conns.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    for (const c of this.conns) c.destroy();
    await Promise.all(closes);
    this.servers.length = 0;
  }
}

/** Per-connection receive buffer in onread mode. */
const READ_BUFFER_SIZE = 256 * 1024;

/**
 * Re-wraps an accepted (paused) socket's handle in a Socket that reads into one reused buffer
 * (net's documented `onread` option, which net.Server does not offer for accepted sockets).
 * Without it every read allocates a fresh 64 KiB ArrayBuffer, and at GB/s the garbage collector
 * costs more CPU than the protocol. Relies on the `handle` constructor option and `_handle`, which
 * Node uses internally for exactly this; anything unexpected returns undefined and the caller
 * keeps the ordinary socket (GEORM_NBD_ONREAD=0 forces that).
 */
function adoptWithUserBuffer(socket: net.Socket): { socket: net.Socket; deliver: (c: NbdConnection) => void } | undefined {
  const inner = socket as unknown as { _handle?: { useUserBuffer?: unknown; readStart?: unknown } | null };
  const handle = inner._handle;
  if (!handle || typeof handle.useUserBuffer !== 'function' || typeof handle.readStart !== 'function') return undefined;
  let target: NbdConnection | undefined;
  const early: Buffer[] = [];
  const receive = Buffer.allocUnsafe(READ_BUFFER_SIZE);
  let adopted: net.Socket;
  try {
    adopted = new net.Socket({
      handle, allowHalfOpen: true, readable: true, writable: true,
      onread: {
        // Asked after every read: the connection may want the next bytes in a payload buffer.
        buffer: () => (target ? target.nextReadBuffer(receive) : receive),
        callback: (n: number, buf: Uint8Array) => {
          if (target) target.onRead(n, buf);
          else early.push(Buffer.from(buf.subarray(0, n))); // before the connection exists: keep a copy
          return true;
        },
      },
    } as net.SocketConstructorOpts);
  } catch {
    return undefined;
  }
  // The original Socket object gives up the handle and goes away without closing it.
  inner._handle = null;
  socket.destroy();
  return {
    socket: adopted,
    deliver: (c) => {
      target = c;
      for (const b of early.splice(0)) c.onChunk(b);
    },
  };
}

/** A unix socket path left by a dead server is removed; a live one (or a non-socket) is left alone. */
async function removeStaleSocket(path: string): Promise<void> {
  const st = await stat(path).catch(() => undefined);
  if (!st || !st.isSocket()) return;
  const alive = await new Promise<boolean>((resolve) => {
    const s = net.connect(path);
    s.once('connect', () => { s.destroy(); resolve(true); });
    s.once('error', () => resolve(false));
  });
  if (!alive) await unlink(path).catch(() => {});
}

/**
 * The userspace reference for a synchronous mirror: qemu-storage-daemon running a blockdev-mirror
 * job with copy-mode=write-blocking from a local file to an NBD peer on loopback, its filter node
 * exported over NBD, so fio (ioengine=nbd) can measure it next to georm.
 *
 *   peer:   qemu-nbd (or nbdkit file) exporting `peerFile` on 127.0.0.1:<free port>
 *   source: blockdev file (+raw) on `file`
 *   target: blockdev nbd client of the peer
 *   job:    blockdev-mirror sync=full copy-mode=write-blocking filter-node-name=mirror-top
 *           → wait for BLOCK_JOB_READY (initial copy done; from then on every guest write is
 *             acknowledged only once it is on both the source and the peer)
 *   export: nbd-server-start on a unix socket, block-export-add of the filter node `mirror-top`
 *
 * Usage: const m = await startQemuMirror({ file, peerFile }); fio … uri=m.uri …; await m.stop();
 * `node dist/scripts/bench/qemu-mirror.js FILE PEERFILE` starts one and prints its URI until SIGINT.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { createConnection, createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { stopProcess } from '../../src/util/process.js';

export interface QemuMirrorOptions {
  /** Local (source) file, raw. */
  file: string;
  /** Peer (target) file, raw, same size; served by `peerServer` on loopback. */
  peerFile: string;
  /** Which NBD server plays the peer. Default 'nbdkit' (threaded; qemu-nbd as peer is ~2× slower here). */
  peerServer?: 'qemu-nbd' | 'nbdkit';
  /**
   * Source cache: 'direct' (O_DIRECT, aio=native) or 'writeback' (page cache, aio=threads). Default
   * 'direct', the setup of DESIGN §8's reference figure (14.6k IOPS 4 KiB randwrite); 'writeback'
   * measured faster here (≈ 19.6k vs 14.0k), so report both when comparing.
   */
  cache?: 'direct' | 'writeback';
  /** Directory for sockets (default: a fresh temp dir, removed by stop()). */
  runDir?: string;
  /** Give up waiting for the initial copy after this long. Default 120 s. */
  readyTimeoutMs?: number;
  /** Stderr lines of the helpers are passed here (default: dropped). */
  log?: (line: string) => void;
}

export interface QemuMirror {
  /** NBD URI of the mirrored device (nbd+unix:///mirror?socket=…). */
  uri: string;
  /** Unix socket path of the export. */
  socket: string;
  /** Stops the export, cancels the job, stops both processes; removes the temp dir it made. */
  stop(): Promise<void>;
}

type QmpReply = { return?: unknown; error?: { class: string; desc: string }; event?: string; data?: Record<string, unknown>; id?: number };

/** A minimal QMP client: one command at a time, events delivered to listeners. */
class Qmp {
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  private readonly eventWaiters: Array<{ match: (e: QmpReply) => boolean; resolve: (e: QmpReply) => void }> = [];
  private readonly events: QmpReply[] = [];

  private constructor(private readonly sock: Socket) {
    createInterface({ input: sock }).on('line', (line) => {
      let msg: QmpReply;
      try { msg = JSON.parse(line) as QmpReply; } catch { return; }
      if (msg.event) {
        const w = this.eventWaiters.findIndex((x) => x.match(msg));
        if (w >= 0) this.eventWaiters.splice(w, 1)[0]!.resolve(msg); else this.events.push(msg);
        return;
      }
      if (msg.id === undefined) return; // greeting
      const p = this.pending.get(msg.id);
      if (!p) return;
      this.pending.delete(msg.id);
      if (msg.error) p.reject(new Error(`QMP error ${msg.error.class}: ${msg.error.desc}`));
      else p.resolve(msg.return);
    });
    sock.on('close', () => {
      for (const p of this.pending.values()) p.reject(new Error('QMP connection closed'));
      this.pending.clear();
    });
  }

  static async connect(path: string, timeoutMs = 10000): Promise<Qmp> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        const sock = createConnection(path);
        await once(sock, 'connect');
        const qmp = new Qmp(sock);
        await qmp.cmd('qmp_capabilities');
        return qmp;
      } catch (e) {
        if (Date.now() > deadline) throw new Error(`cannot connect to QMP at ${path}: ${(e as Error).message}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  }

  cmd(execute: string, args?: Record<string, unknown>): Promise<unknown> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.sock.write(`${JSON.stringify({ execute, ...(args ? { arguments: args } : {}), id })}\n`);
    });
  }

  waitEvent(match: (e: QmpReply) => boolean, timeoutMs: number, what: string): Promise<QmpReply> {
    const seen = this.events.findIndex(match);
    if (seen >= 0) return Promise.resolve(this.events.splice(seen, 1)[0]!);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`timeout waiting for ${what}`)), timeoutMs);
      this.eventWaiters.push({ match, resolve: (e) => { clearTimeout(timer); resolve(e); } });
    });
  }

  close(): void { this.sock.destroy(); }
}

async function freePort(): Promise<number> {
  const srv = createServer();
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const port = (srv.address() as { port: number }).port;
  await new Promise((r) => srv.close(r));
  return port;
}

async function waitPort(port: number, child: ChildProcess, timeoutMs = 10000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`peer NBD server exited with code ${child.exitCode}`);
    try {
      const s = createConnection(port, '127.0.0.1');
      await once(s, 'connect');
      s.destroy();
      return;
    } catch {
      if (Date.now() > deadline) throw new Error(`peer NBD server did not listen on port ${port}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

export async function startQemuMirror(opts: QemuMirrorOptions): Promise<QemuMirror> {
  const madeDir = opts.runDir === undefined;
  const dir = opts.runDir ?? await mkdtemp(join(tmpdir(), 'georm-qemu-mirror-'));
  const log = opts.log ?? (() => undefined);
  const pipeLog = (name: string, c: ChildProcess) => {
    if (c.stderr) createInterface({ input: c.stderr }).on('line', (l) => log(`${name}: ${l}`));
  };
  const [srcSize, peerSize] = await Promise.all([stat(opts.file), stat(opts.peerFile)]).then((s) => s.map((x) => x.size));
  if (srcSize !== peerSize) throw new Error(`source ${opts.file} (${srcSize} B) and peer ${opts.peerFile} (${peerSize} B) differ in size`);

  let peer: ChildProcess | undefined;
  let qsd: ChildProcess | undefined;
  let qmp: Qmp | undefined;
  const cleanup = async () => {
    qmp?.close();
    if (qsd) await stopProcess(qsd);
    if (peer) await stopProcess(peer);
    if (madeDir) await rm(dir, { recursive: true, force: true });
  };
  try {
    const port = await freePort();
    peer = (opts.peerServer ?? 'nbdkit') === 'nbdkit'
      ? spawn('nbdkit', ['--foreground', '--exit-with-parent', '-i', '127.0.0.1', '-p', String(port), 'file', `file=${opts.peerFile}`], { stdio: ['ignore', 'ignore', 'pipe'] })
      : spawn('qemu-nbd', ['-f', 'raw', '-b', '127.0.0.1', '-p', String(port), '-t', '-e', '8', '--cache=writeback', '--aio=threads', opts.peerFile], { stdio: ['ignore', 'ignore', 'pipe'] });
    pipeLog('peer', peer);
    await waitPort(port, peer);

    const qmpSock = join(dir, 'qmp.sock');
    const exportSock = join(dir, 'mirror.nbd');
    qsd = spawn('qemu-storage-daemon', ['--chardev', `socket,id=qmp0,path=${qmpSock},server=on,wait=off`, '--monitor', 'chardev=qmp0'], { stdio: ['ignore', 'ignore', 'pipe'] });
    pipeLog('qemu-storage-daemon', qsd);
    qmp = await Qmp.connect(qmpSock);

    const direct = (opts.cache ?? 'direct') === 'direct';
    await qmp.cmd('blockdev-add', {
      driver: 'file', 'node-name': 'src-file', filename: opts.file, aio: direct ? 'native' : 'threads', cache: { direct, 'no-flush': false },
    });
    await qmp.cmd('blockdev-add', { driver: 'raw', 'node-name': 'src', file: 'src-file' });
    await qmp.cmd('blockdev-add', {
      driver: 'nbd', 'node-name': 'tgt', server: { type: 'inet', host: '127.0.0.1', port: String(port) }, export: '',
    });
    await qmp.cmd('blockdev-mirror', {
      'job-id': 'mirror0', device: 'src', target: 'tgt', sync: 'full', 'copy-mode': 'write-blocking',
      'filter-node-name': 'mirror-top', 'auto-finalize': true, 'auto-dismiss': true,
    });
    await qmp.waitEvent((e) => e.event === 'BLOCK_JOB_READY' && e.data?.device === 'mirror0', opts.readyTimeoutMs ?? 120000, 'the mirror job to become ready');
    // nbd-server-start takes the legacy address form ({type, data}).
    await qmp.cmd('nbd-server-start', { addr: { type: 'unix', data: { path: exportSock } } });
    await qmp.cmd('block-export-add', { type: 'nbd', id: 'exp0', 'node-name': 'mirror-top', name: 'mirror', writable: true });

    const q = qmp;
    let stopped = false;
    return {
      uri: `nbd+unix:///mirror?socket=${exportSock}`,
      socket: exportSock,
      async stop() {
        if (stopped) return;
        stopped = true;
        try {
          await q.cmd('block-export-del', { id: 'exp0', mode: 'hard' }).catch(() => undefined);
          await q.cmd('block-job-cancel', { device: 'mirror0', force: true }).catch(() => undefined);
          await q.waitEvent((e) => e.event === 'BLOCK_JOB_CANCELLED' || e.event === 'BLOCK_JOB_COMPLETED', 10000, 'the job to stop').catch(() => undefined);
          await q.cmd('quit').catch(() => undefined);
        } finally {
          await cleanup();
        }
      },
    };
  } catch (e) {
    await cleanup();
    throw e;
  }
}

// Run directly: start a mirror and keep it up until SIGINT/SIGTERM.
if (process.argv[1] && import.meta.url === new URL(`file://${process.argv[1]}`).href) {
  const [file, peerFile] = process.argv.slice(2);
  if (!file || !peerFile) {
    process.stderr.write('usage: node dist/scripts/bench/qemu-mirror.js FILE PEERFILE\n');
    process.exit(1);
  }
  const m = await startQemuMirror({ file, peerFile, log: (l) => process.stderr.write(`${l}\n`) });
  process.stdout.write(`${JSON.stringify({ uri: m.uri })}\n`);
  const stop = () => { void m.stop().then(() => process.exit(0)); };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
}

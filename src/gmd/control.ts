import { createServer, createConnection, type Server } from 'node:net';
import { mkdir, rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import { GeormError } from '../util/errors.js';

/**
 * The per-GMD control socket: newline-delimited JSON, one request and one reply per line.
 * Request `{"id":1,"op":"status","args":{}}`, reply `{"id":1,"ok":true,"result":…}` or
 * `{"id":1,"ok":false,"error":{"code":"…","message":"…","exitCode":1}}`.
 */
export interface ControlRequest { id?: number; op: string; args?: Record<string, unknown> }
export type ControlHandler = (op: string, args: Record<string, unknown>) => Promise<unknown>;

export async function serveControl(path: string, handler: ControlHandler): Promise<Server> {
  await mkdir(dirname(path), { recursive: true });
  await rm(path, { force: true });
  const server = createServer((sock) => {
    let buf = '';
    sock.setEncoding('utf8');
    sock.on('error', () => undefined);
    sock.on('data', (d: string) => {
      buf += d;
      if (buf.length > 1 << 20) { sock.destroy(); return; }
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (!line.trim()) continue;
        let req: ControlRequest;
        try {
          req = JSON.parse(line) as ControlRequest;
          if (typeof req.op !== 'string') throw new Error('op missing');
        } catch (e) {
          sock.write(JSON.stringify({ ok: false, error: { code: 'GMD_ERR_BAD_REQUEST', message: `bad control request: ${(e as Error).message}` } }) + '\n');
          continue;
        }
        handler(req.op, req.args ?? {}).then(
          (result) => { if (!sock.destroyed) sock.write(JSON.stringify({ id: req.id, ok: true, result: result ?? null }) + '\n'); },
          (err: unknown) => {
            const e = err as Partial<GeormError> & Error;
            if (!sock.destroyed) sock.write(JSON.stringify({ id: req.id, ok: false, error: { code: e.code ?? 'GMD_ERR_INTERNAL', message: e.message, exitCode: e.exitCode } }) + '\n');
          });
      }
    });
  });
  await new Promise<void>((resolve, reject) => { server.once('error', reject); server.listen(path, () => { server.off('error', reject); resolve(); }); });
  return server;
}

/** One request to a GMD's control socket. Errors come back as GeormError with the remote code. */
export function callControl(path: string, op: string, args: Record<string, unknown> = {}, timeoutMs = 60000): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const sock = createConnection(path);
    let buf = '';
    let answered = false;
    const timer = setTimeout(() => { answered = true; sock.destroy(); reject(new GeormError('GMD_ERR_TIMEOUT', `no answer from ${path} within ${timeoutMs} ms`)); }, timeoutMs);
    sock.setEncoding('utf8');
    sock.on('connect', () => sock.write(JSON.stringify({ id: 1, op, args }) + '\n'));
    sock.on('data', (d: string) => {
      buf += d;
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      clearTimeout(timer);
      answered = true;
      sock.end();
      try {
        const r = JSON.parse(buf.slice(0, nl)) as { ok: boolean; result?: unknown; error?: { code: string; message: string; exitCode?: number } };
        if (r.ok) resolve(r.result);
        else reject(new GeormError(r.error?.code ?? 'GMD_ERR_INTERNAL', r.error?.message ?? 'unknown error', r.error?.exitCode === undefined ? undefined : { exitCode: r.error.exitCode }));
      } catch (e) { reject(e as Error); }
    });
    // The GMD process ended (or closed the connection) before answering: say so now rather than
    // after the whole timeout. After an error event the promise has already been settled.
    sock.on('close', (hadError) => {
      if (answered || hadError) return;
      clearTimeout(timer);
      reject(new GeormError('GMD_ERR_NO_ANSWER', `${path} closed the connection without answering '${op}' (did the GMD process exit? see its log)`));
    });
    sock.on('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      answered = true;
      if (e.code === 'ENOENT' || e.code === 'ECONNREFUSED') {
        reject(new GeormError('GMD_ERR_NOT_RUNNING', `no GMD process is listening on ${path} (start it with 'georm gmd run <name>')`, { exitCode: 2 }));
      } else reject(e);
    });
  });
}

import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { ROOT } from './vm.js';
import { stopProcess } from '../../src/util/process.js';

/**
 * NBD servers on the host for the guest to reach (as 10.0.2.2): `georm export` and, as the
 * reference, `nbdkit file`. Both listen on 127.0.0.1 only.
 */
export interface HostServer { kind: string; port: number; exportName: string; child: ChildProcess; output(): string; stop(): Promise<void> }

/** A free TCP port on 127.0.0.1 (nbdkit cannot report an ephemeral one). */
export async function freePort(): Promise<number> {
  const s = net.createServer();
  s.listen(0, '127.0.0.1');
  await once(s, 'listening');
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

async function waitListening(port: number, child: ChildProcess, out: () => string, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`server exited early: ${out().slice(-2000)}`);
    const ok = await new Promise<boolean>((res) => {
      const c = net.connect(port, '127.0.0.1');
      c.once('connect', () => { c.destroy(); res(true); });
      c.once('error', () => res(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`server not listening on ${port}: ${out().slice(-2000)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function wrap(kind: string, port: number, exportName: string, child: ChildProcess): HostServer {
  let text = '';
  child.stdout?.setEncoding('utf8').on('data', (d: string) => { text += d; });
  child.stderr?.setEncoding('utf8').on('data', (d: string) => { text += d; });
  return {
    kind, port, exportName, child,
    output: () => text,
    async stop() {
      await stopProcess(child);
    },
  };
}

export function geormAvailable(): boolean {
  return existsSync(join(ROOT, 'dist/src/cli/commands/export.js'));
}

/** `georm export VOLUME --listen tcp://127.0.0.1:PORT --name NAME`. */
export async function startGeormExport(volume: string, exportName = 'vol', extra: string[] = []): Promise<HostServer> {
  const port = await freePort();
  const child = spawn(process.execPath, [join(ROOT, 'bin/georm.js'), 'export', volume, '--listen', `tcp://127.0.0.1:${port}`, '--name', exportName, ...extra],
    { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, GEORM_LOG_LEVEL: process.env.GEORM_LOG_LEVEL ?? 'warn' } });
  const s = wrap('georm export', port, exportName, child);
  await waitListening(port, child, s.output);
  return s;
}

/** `nbdkit file VOLUME` (threads, the C reference). */
export async function startNbdkit(volume: string, exportName = 'vol'): Promise<HostServer> {
  const port = await freePort();
  const child = spawn('nbdkit', ['-f', '-i', '127.0.0.1', '-p', String(port), '-e', exportName, 'file', volume],
    { stdio: ['ignore', 'pipe', 'pipe'] });
  const s = wrap('nbdkit file', port, exportName, child);
  await waitListening(port, child, s.output);
  return s;
}

export function demoAvailable(): boolean {
  return existsSync(join(ROOT, 'dist/src/cli/commands/demo.js'));
}

export interface DemoServer extends HostServer { primaryVolume: string; secondaryVolume: string }

/**
 * `georm demo`: a two-site GeoMirror device on the host's loopback (primary and secondary processes);
 * the guest reaches the primary's NBD export.
 */
export async function startGeormDemo(dir: string, size: string, mode = 'mwc'): Promise<DemoServer> {
  const child = spawn(process.execPath, [join(ROOT, 'bin/georm.js'), 'demo', '--dir', dir, '--size', size, '--mode', mode],
    { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, GEORM_LOG_LEVEL: process.env.GEORM_LOG_LEVEL ?? 'warn' } });
  let line = '';
  let errText = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => { errText += d; });
  const info = await new Promise<{ uri: string; primaryVolume: string; secondaryVolume: string }>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`georm demo did not start: ${errText.slice(-2000)}`)), 60_000);
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      line += d;
      const nl = line.indexOf('\n');
      if (nl >= 0) { clearTimeout(timer); try { resolve(JSON.parse(line.slice(0, nl))); } catch (e) { reject(e as Error); } }
    });
    child.once('exit', (code) => { clearTimeout(timer); reject(new Error(`georm demo exited (${code}): ${errText.slice(-2000)}`)); });
  });
  const m = /^nbd:\/\/127\.0\.0\.1:(\d+)\/(.*)$/.exec(info.uri);
  if (!m) throw new Error(`unexpected demo URI ${info.uri}`);
  const s = wrap('georm demo (GMD primary)', Number(m[1]), decodeURIComponent(m[2]!), child);
  return { ...s, stop: s.stop, output: () => errText, primaryVolume: info.primaryVolume, secondaryVolume: info.secondaryVolume };
}

import { randomBytes } from 'node:crypto';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { freePort } from '../../scripts/vm/host.js';
import { GEORM_BIN } from '../helpers/env.js';
import { callControl } from '../../src/gmd/control.js';

/**
 * A two-machine cluster configuration for the VM scenario with a GMD on each side of the qemu NAT:
 * alpha in the guest (primary, or secondary with `alphaRole`), beta on the host (the other role). The file is the same except for the
 * addresses each side uses to reach the other (NAT views), rendered per side.
 */
export interface SideView { alpha: { address: string; port: number }; beta: { address: string; port: number } }
export interface GmdPair {
  gmd: string; mode: string; keyFile: string;
  /** alpha's role (beta takes the other one); default primary. Seconds until gmddown of a silent peer; default 30. */
  alphaRole?: 'primary' | 'secondary'; promoteFailureTimeout?: number;
  /** resync_rate_limit of the GMD (e.g. "1M" per second); default none. */
  resyncRateLimit?: string;
  alpha: { volume: string; stateMap: string; runDir: string; nbdDevice?: string; nbdListen: string[] };
  beta: { volume: string; stateMap: string; runDir: string; nbdListen: string[] };
}

export function renderPairConfig(p: GmdPair, view: SideView): string {
  const q = JSON.stringify;
  const alphaRole = p.alphaRole ?? 'primary';
  const betaRole = alphaRole === 'primary' ? 'secondary' : 'primary';
  const machine = (name: string, site: string, runDir: string, a: { address: string; port: number }) =>
    `\n[[machine]]\nname = ${q(name)}\nsite = ${q(site)}\npromote_failure_timeout = ${p.promoteFailureTimeout ?? 30}\nrun_dir = ${q(runDir)}\n` +
    `  [[machine.interface]]\n  network = "geo1"\n  address = ${q(a.address)}\n  port = ${a.port}\n`;
  let t = `[cluster]\nname = "vmtest"\nkey_file = ${q(p.keyFile)}\n\n[[site]]\nname = "east"\n[[site]]\nname = "west"\n\n[[network]]\nname = "geo1"\nmtu = 1500\n`;
  t += machine('alpha', 'east', p.alpha.runDir, view.alpha) + machine('beta', 'west', p.beta.runDir, view.beta);
  t += `\n[[gmd]]\nname = ${q(p.gmd)}\nminor = 0\nmode = ${q(p.mode)}\nregion_size = "32K"\nsync_rate = "256K"\nhwm = "128K"\n`;
  if (p.resyncRateLimit) t += `resync_rate_limit = ${q(p.resyncRateLimit)}\n`;
  t += `  [[gmd.machine]]\n  machine = "alpha"\n  volume = ${q(p.alpha.volume)}\n  state_map = ${q(p.alpha.stateMap)}\n  role = ${q(alphaRole)}\n  nbd_listen = ${q(p.alpha.nbdListen)}\n`;
  if (p.alpha.nbdDevice) t += `  nbd_device = ${q(p.alpha.nbdDevice)}\n`;
  t += `  [[gmd.machine]]\n  machine = "beta"\n  volume = ${q(p.beta.volume)}\n  state_map = ${q(p.beta.stateMap)}\n  role = ${q(betaRole)}\n  nbd_listen = ${q(p.beta.nbdListen)}\n`;
  return t;
}

export interface VmPair {
  pair: Omit<GmdPair, 'keyFile'>;
  /** The host's view of the configuration (beta runs with it). */
  hostCfg: string;
  /** For bootVm: the forwarded UDP port through which the host reaches alpha in the guest. */
  udpIn: Array<{ guest: number; host: number }>;
}

/**
 * What the scenarios with alpha (primary, /dev/nbd0) in the guest and beta (secondary) on the host
 * share: a fresh cluster key in the job folder and the test folder, the guest's view of the
 * configuration in job/georm.toml and the host's in dir/georm.toml, beta's run dir, and beta's
 * volume (sparse, `betaSizeMb`). UDP: the guest binds 10.0.2.15:GA and reaches the host's beta as
 * 10.0.2.2:PB (slirp NAT); the host reaches the guest through 127.0.0.1:HF forwarded to 10.0.2.15:GA.
 */
export async function setupVmPair(dir: string, job: string, o: {
  mode: string; alphaVolume: string; alphaMap: string; betaSizeMb: number; alphaNbdListen?: string[];
  /** The guest's role; 'secondary' makes the host's beta the primary (no /dev/nbd0 in the guest then). */
  alphaRole?: 'primary' | 'secondary'; promoteFailureTimeout?: number; resyncRateLimit?: string;
}): Promise<VmPair> {
  const key = randomBytes(32).toString('hex') + '\n';
  writeFileSync(join(job, 'cluster.key'), key, { mode: 0o600 });
  writeFileSync(join(dir, 'cluster.key'), key, { mode: 0o600 });
  const GA = 7400;
  // A TCP-free port is a good guess for UDP on loopback; the GMD reports a clear error if it is taken.
  const PB = await freePort();
  const HF = await freePort();
  const pair = {
    gmd: 'vm0gmd', mode: o.mode, alphaRole: o.alphaRole ?? 'primary', promoteFailureTimeout: o.promoteFailureTimeout ?? 30,
    ...(o.resyncRateLimit ? { resyncRateLimit: o.resyncRateLimit } : {}),
    alpha: { volume: o.alphaVolume, stateMap: o.alphaMap, runDir: '/tmp/run', nbdListen: o.alphaNbdListen ?? [],
      ...(o.alphaRole === 'secondary' ? {} : { nbdDevice: '/dev/nbd0' }) },
    beta: { volume: join(dir, 'beta.img'), stateMap: join(dir, 'beta.map'), runDir: join(dir, 'run'), nbdListen: [`unix:${join(dir, 'run', 'beta.nbd')}`] },
  };
  writeFileSync(join(job, 'georm.toml'), renderPairConfig({ ...pair, keyFile: '/job/cluster.key' },
    { alpha: { address: '10.0.2.15', port: GA }, beta: { address: '10.0.2.2', port: PB } }));
  const hostCfg = join(dir, 'georm.toml');
  writeFileSync(hostCfg, renderPairConfig({ ...pair, keyFile: join(dir, 'cluster.key') },
    { alpha: { address: '127.0.0.1', port: HF }, beta: { address: '127.0.0.1', port: PB } }));
  mkdirSync(join(dir, 'run'));
  writeFileSync(pair.beta.volume, '');
  truncateSync(pair.beta.volume, o.betaSizeMb * 1024 * 1024);
  return { pair, hostCfg, udpIn: [{ guest: GA, host: HF }] };
}

/**
 * beta (the secondary, or the primary when the guest's alpha is secondary) on the host: `georm gmd run vm0gmd --machine beta …`, registered with `track`,
 * output collected. `available()` waits until beta's GMD is AVAILABLE: boot the guest only then, or
 * beta's start may meet alpha while alpha is still DEFINED, and a DEFINED GMD reports mode "mwc"
 * whatever its definition says (device.ts info()), which refuses the start of a sync or async pair.
 */
export function runHostBeta(hostCfg: string, runDir: string, track: (c: ChildProcess) => void, extra: string[], env: NodeJS.ProcessEnv = {}):
  { child: ChildProcess; log: () => string; available: () => Promise<void> } {
  let text = '';
  const child = spawn(process.execPath, [GEORM_BIN, 'gmd', 'run', 'vm0gmd', '--config', hostCfg, '--machine', 'beta', ...extra],
    { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, GEORM_LOG_LEVEL: 'warn', ...env } });
  track(child);
  child.stdout!.setEncoding('utf8').on('data', (d: string) => { text += d; });
  child.stderr!.setEncoding('utf8').on('data', (d: string) => { text += d; });
  const available = async (): Promise<void> => {
    const deadline = Date.now() + 60_000;
    for (;;) {
      if (child.exitCode !== null || child.signalCode !== null) throw new Error(`beta exited (${child.exitCode}): ${text.slice(-2000)}`);
      const s = await callControl(join(runDir, 'vm0gmd.sock'), 'status', {}, 2000).catch(() => null) as { state?: string } | null;
      if (s?.state === 'AVAILABLE') return;
      if (Date.now() > deadline) throw new Error(`beta not AVAILABLE within 60 s: ${text.slice(-2000)}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  };
  return { child, log: () => text, available };
}

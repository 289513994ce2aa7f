/**
 * A two-machine cluster configuration for the VM scenario with a GMD on each side of the qemu NAT:
 * alpha (primary) in the guest, beta (secondary) on the host. The file is the same except for the
 * addresses each side uses to reach the other (NAT views), rendered per side.
 */
export interface SideView { alpha: { address: string; port: number }; beta: { address: string; port: number } }
export interface GmdPair {
  gmd: string; mode: string; keyFile: string;
  alpha: { volume: string; stateMap: string; runDir: string; nbdDevice?: string; nbdListen: string[] };
  beta: { volume: string; stateMap: string; runDir: string; nbdListen: string[] };
}

export function renderPairConfig(p: GmdPair, view: SideView): string {
  const q = JSON.stringify;
  const machine = (name: string, site: string, runDir: string, a: { address: string; port: number }) =>
    `\n[[machine]]\nname = ${q(name)}\nsite = ${q(site)}\npromote_failure_timeout = 30\nrun_dir = ${q(runDir)}\n` +
    `  [[machine.interface]]\n  network = "geo1"\n  address = ${q(a.address)}\n  port = ${a.port}\n`;
  let t = `[cluster]\nname = "vmtest"\nkey_file = ${q(p.keyFile)}\n\n[[site]]\nname = "east"\n[[site]]\nname = "west"\n\n[[network]]\nname = "geo1"\nmtu = 1500\n`;
  t += machine('alpha', 'east', p.alpha.runDir, view.alpha) + machine('beta', 'west', p.beta.runDir, view.beta);
  t += `\n[[gmd]]\nname = ${q(p.gmd)}\nminor = 0\nmode = ${q(p.mode)}\nregion_size = "32K"\nsync_rate = "256K"\nhwm = "128K"\n`;
  t += `  [[gmd.machine]]\n  machine = "alpha"\n  volume = ${q(p.alpha.volume)}\n  state_map = ${q(p.alpha.stateMap)}\n  role = "primary"\n  nbd_listen = ${q(p.alpha.nbdListen)}\n`;
  if (p.alpha.nbdDevice) t += `  nbd_device = ${q(p.alpha.nbdDevice)}\n`;
  t += `  [[gmd.machine]]\n  machine = "beta"\n  volume = ${q(p.beta.volume)}\n  state_map = ${q(p.beta.stateMap)}\n  role = "secondary"\n  nbd_listen = ${q(p.beta.nbdListen)}\n`;
  return t;
}

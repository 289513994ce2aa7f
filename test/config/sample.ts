/** The contract's example cluster file, two machines; tests derive broken variants from it. */
export const SAMPLE = `[cluster]
name = "demo"
key_file = "/etc/georm/cluster.key"

[[site]]
name = "east"
[[site]]
name = "west"

[[network]]
name = "geo1"
mtu = 1500          # default 1500

[[network]]
name = "geo2"

[[machine]]
name = "alpha"
site = "east"
promote_failure_timeout = 30   # seconds, 0 = never
run_dir = "/run/georm"         # control sockets (default)
  [[machine.interface]]
  network = "geo1"
  address = "127.0.0.1"
  port = 7400                  # base port; a GMD uses port + minor
  [[machine.interface]]
  network = "geo2"
  address = "127.0.0.2"
  port = 7400

[[machine]]
name = "beta"
site = "west"
  [[machine.interface]]
  network = "geo1"
  address = "127.0.0.1"
  port = 7500
  [[machine.interface]]
  network = "geo2"
  address = "127.0.0.2"
  port = 7500

[[gmd]]
name = "data10gmd"
minor = 10
mode = "mwc"                   # sync | mwc | async
region_size = "32K"            # default 32K
sync_rate = "64K"              # resync request size, default 64K
hwm = "128K"                   # async high water mark, default 128K
resync_rate_limit = "0"        # bytes/s, 0 = unlimited
  [[gmd.machine]]
  machine = "alpha"
  volume = "/var/lib/georm/data10.img"
  state_map = "/var/lib/georm/data10gmd.map"
  role = "primary"             # primary | secondary | none
  nbd_listen = ["unix:/run/georm/data10gmd.nbd"]
  nbd_device = "/dev/nbd10"    # optional
  [[gmd.machine]]
  machine = "beta"
  volume = "/var/lib/georm/data10.img"
  state_map = "/var/lib/georm/data10gmd.map"
  role = "secondary"
`;

/** Line number (1-based) of the first line of SAMPLE containing `needle` after the `nth` match of `after`. */
export function lineOf(text: string, needle: string, after?: string, nth = 1): number {
  const lines = text.split('\n');
  let start = 0;
  if (after !== undefined) {
    let seen = 0;
    start = lines.findIndex((l) => l.includes(after) && ++seen === nth);
  }
  const i = lines.findIndex((l, k) => k >= start && l.includes(needle));
  return i + 1;
}

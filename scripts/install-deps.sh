#!/usr/bin/env bash
# Installs the Debian packages georm's tests and benchmarks use, when they are missing.
# Idempotent; needs root (or passwordless sudo). Without apt it says so and exits 0:
# the tests that need a missing tool then report SKIP with the reason.
set -u

# The VM tests also need Debian's linux-image-cloud-amd64 kernel package: scripts/vm/build.sh fetches it
# with `apt-get download` into its cache (never installed on this machine).
PKGS=(
  nbdkit              # reference NBD server (benchmarks, VM tests)
  libnbd-bin          # nbdinfo, nbdcopy, nbdfuse
  python3-libnbd      # nbdsh
  qemu-utils          # qemu-img, qemu-io, qemu-nbd
  qemu-system-x86     # VM tests (TCG) and qemu-storage-daemon
  fio                 # benchmarks and verify workloads (ioengine=nbd)
  fuse3               # nbdfuse
  e2fsprogs           # mkfs.ext4, e2fsck
  util-linux          # losetup, mount
  iproute2            # network namespaces, veth, tc
  iptables            # packet-drop fault injection
  busybox-static      # VM initramfs
  nbd-client          # kernel NBD client, copied into the VM
  cpio                # building the VM initramfs
  systemd             # systemd-analyze verify for unit files
  nbd-server          # reference server for conformance comparisons
  python3             # plays systemd's notify socket in tests (Node has no unix datagram sockets)
  strace              # mark-before-issue ordering checks (test/gmd/mark-order, test/statemap/durability)
)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
    echo "install-deps: not root; missing packages (tests needing them will SKIP): ${missing[*]}" >&2
    exit 0
  fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-deps: no apt-get; missing packages (tests needing them will SKIP): ${missing[*]}" >&2
  exit 0
fi

echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
stamp=/var/lib/apt/periodic/georm-update-stamp
if [ ! -e "$stamp" ] || [ -n "$(find "$stamp" -mmin +720 2>/dev/null)" ]; then
  $SUDO apt-get update -qq >&2 && $SUDO mkdir -p "$(dirname "$stamp")" && $SUDO touch "$stamp"
fi
# Install one by one on failure so that one unavailable package does not block the rest.
if ! $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2; then
  for p in "${missing[@]}"; do
    $SUDO apt-get install -y -qq --no-install-recommends "$p" >&2 || echo "install-deps: could not install $p" >&2
  done
fi
exit 0

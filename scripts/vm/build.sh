#!/usr/bin/env bash
# Builds (once, then from cache) what the VM tests boot: Debian's cloud kernel, a busybox initramfs
# with the virtio and nbd modules, and a read-only "tools" disk image with nbd-client, mke2fs, e2fsck,
# fio and node, each with the shared libraries it needs (found with ldd).
#
#   scripts/vm/build.sh [CACHE_DIR]      prints KEY=VALUE lines: KERNEL, INITRD, TOOLS, KVER
#
# The kernel comes from the Debian archive through apt (`apt-get download` of the package that
# linux-image-cloud-amd64 depends on), never from elsewhere. Cache: $GEORM_VM_CACHE, else
# /var/cache/georm-vm when writable, else node_modules/.cache/georm-vm. A rebuild happens when this
# script, the kernel version or a copied binary changes (the key is a hash of all of them).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

cache=${1:-${GEORM_VM_CACHE:-}}
if [ -z "$cache" ]; then
  if mkdir -p /var/cache/georm-vm 2>/dev/null && [ -w /var/cache/georm-vm ]; then cache=/var/cache/georm-vm
  else cache=$root/node_modules/.cache/georm-vm; fi
fi
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9   # parallel test files share one build

need() { command -v "$1" >/dev/null 2>&1 || { echo "vm-build: missing $1 (scripts/install-deps.sh installs it)" >&2; exit 3; }; }
for c in apt-cache apt-get dpkg-deb cpio gzip busybox nbd-client mke2fs e2fsck fio ldd; do need "$c"; done

# --- kernel -----------------------------------------------------------------------------------
pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[ -n "$pkg" ] || { echo "vm-build: apt-cache knows no linux-image-cloud-amd64 (run apt-get update)" >&2; exit 3; }
kver=${pkg#linux-image-}
kdir=$cache/kernel-$kver
if [ ! -e "$kdir/.done" ]; then
  rm -rf "$kdir" && mkdir -p "$kdir/deb"
  (cd "$kdir/deb" && apt-get download "$pkg" >&2 2>/dev/null) || (cd "$kdir/deb" && apt-get download "$pkg" >&2)
  dpkg-deb -x "$kdir"/deb/*.deb "$kdir/x"
  cp "$kdir/x/boot/vmlinuz-$kver" "$kdir/vmlinuz"
  rm -rf "$kdir/deb"
  touch "$kdir/.done"
fi
moddir=$kdir/x/lib/modules/$kver/kernel
# Load order matters (no modprobe/depmod in the guest): each module after the ones it needs.
MODULES="drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_pci_modern_dev
  drivers/virtio/virtio_pci_legacy_dev drivers/virtio/virtio_pci net/core/failover
  drivers/net/net_failover drivers/net/virtio_net drivers/block/virtio_blk drivers/block/nbd"

TOOLS="$(command -v nbd-client) $(command -v mke2fs) $(command -v e2fsck) $(command -v debugfs 2>/dev/null || true) $(command -v fio) $(command -v node)"

key=$( { cat "$0" "$here/init.sh"; echo "$kver"; for t in $TOOLS; do sha256sum "$t"; done; sha256sum "$(command -v busybox)"; } | sha256sum | cut -c1-16)
out=$cache/build-$key
if [ ! -e "$out/.done" ]; then
  rm -rf "$out" && mkdir -p "$out/initramfs" "$out/tools"
  # --- initramfs: busybox, the modules, /init ----------------------------------------------------
  ir=$out/initramfs
  mkdir -p "$ir"/{bin,sbin,dev,proc,sys,tmp,mnt,modules,tools,job,lib,lib64}
  cp "$(command -v busybox)" "$ir/bin/busybox"
  for m in $MODULES; do cp "$moddir/$m.ko" "$ir/modules/"; done
  echo "$MODULES" | xargs -n1 basename > "$ir/modules/order"
  cp "$here/init.sh" "$ir/init"
  chmod +x "$ir/init"
  (cd "$ir" && find . | cpio -o -H newc --quiet | gzip -1) > "$out/initrd.gz"

  # --- tools disk: binaries + their libraries at their own paths -------------------------------
  td=$out/tools
  mkdir -p "$td/bin"
  for t in $TOOLS; do
    cp -L "$t" "$td/bin/"
    for lib in $(ldd "$t" | awk '/=> \// {print $3} /^[ \t]*\// {print $1}'); do
      mkdir -p "$td$(dirname "$lib")"
      cp -L "$lib" "$td$lib"
    done
  done
  ln -sf mke2fs "$td/bin/mkfs.ext4"
  size_mb=$(( $(du -sm "$td" | cut -f1) + 64 ))
  mke2fs -q -F -t ext4 -E nodiscard,lazy_itable_init=1,lazy_journal_init=1 -L georm-tools -d "$td" "$out/tools.img" "${size_mb}M"
  rm -rf "$td"
  touch "$out/.done"
fi
# Keep only the current build and kernel.
for old in "$cache"/build-* "$cache"/kernel-*; do [ "$old" = "$out" ] || [ "$old" = "$kdir" ] || rm -rf "$old"; done

echo "KVER=$kver"
echo "KERNEL=$kdir/vmlinuz"
echo "INITRD=$out/initrd.gz"
echo "TOOLS=$out/tools.img"

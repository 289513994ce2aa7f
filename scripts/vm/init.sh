#!/bin/busybox sh
# PID 1 of the test VM: mount the basics, load the modules, bring up the user-mode network
# (the host is 10.0.2.2), mount the tools disk (vda) and the job disk (vdb), run /job/run.sh,
# print its exit code for the host and power off.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/tools/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/shm && mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
for m in $(cat /modules/order); do
  insmod /modules/$m.ko || echo "GEORM-VM: insmod $m failed"
done
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
mount -o ro /dev/vda /tools || echo "GEORM-VM: no tools disk"
# Dynamic binaries on the tools disk look for their loader and libraries at the usual paths.
ln -s /tools/lib64/ld-linux-x86-64.so.2 /lib64/ld-linux-x86-64.so.2
mkdir -p /lib /usr
ln -s /tools/lib/x86_64-linux-gnu /lib/x86_64-linux-gnu
ln -s /tools/usr/lib /usr/lib 2>/dev/null
mount /dev/vdb /job || echo "GEORM-VM: no job disk"
echo "GEORM-VM: booted $(uname -r)"
rc=1
if [ -f /job/run.sh ]; then
  cd /job && sh -x /job/run.sh
  rc=$?
fi
echo "GEORM-VM-EXIT $rc"
sync
umount /job 2>/dev/null
poweroff -f
echo o > /proc/sysrq-trigger
sleep 5

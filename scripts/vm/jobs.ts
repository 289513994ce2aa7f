/**
 * Guest-side shell for the VM scenarios, shared by the tests and the benchmark. Each function returns
 * a fragment of /job/run.sh (busybox sh, `set -e` on). Results go to the console as marker lines the
 * host parses: `SHA <file> <sha256>`, `FIO <label> <job> <KiB/s> <IOPS>`, `OK <step>`.
 */

/** Connect /dev/nbd0 with Debian's nbd-client (netlink) to an NBD server on the host. */
export function nbdClientConnect(port: number, exportName: string, device = '/dev/nbd0'): string {
  return `nbd-client 10.0.2.2 ${port} ${device} -N ${exportName} -b 4096 -t 30
echo "OK nbd-client connected"
`;
}

export function nbdClientDisconnect(device = '/dev/nbd0'): string {
  return `nbd-client -d ${device}
echo "OK nbd-client disconnected"
`;
}

/**
 * The filesystem workload: mkfs.ext4, mount, random files and a fio verify job, checksums, umount,
 * mount again and check the checksums survived, umount. Ends with the device's own checksum so the
 * host can compare it with the backing volume(s).
 */
export function filesystemWorkload(device = '/dev/nbd0'): string {
  return `mkfs.ext4 -q -F -b 4096 ${device}
mkdir -p /mnt/v
mount -t ext4 ${device} /mnt/v
dd if=/dev/urandom of=/mnt/v/file1 bs=1M count=4 2>/dev/null
dd if=/dev/urandom of=/mnt/v/file2 bs=65536 count=3 2>/dev/null
mkdir -p /mnt/v/dir && dd if=/dev/urandom of=/mnt/v/dir/file3 bs=4096 count=7 2>/dev/null
fio --name=verify --filename=/mnt/v/fio.dat --size=16M --rw=randwrite --bs=4k --iodepth=16 \\
    --ioengine=libaio --direct=1 --verify=crc32c --do_verify=1 --verify_fatal=1 --output-format=terse >/tmp/fio.out
echo "OK fio verify"
for f in file1 file2 dir/file3 fio.dat; do echo "SHA $f $(sha256sum /mnt/v/$f | cut -d' ' -f1)"; done
umount /mnt/v
mount -t ext4 ${device} /mnt/v
for f in file1 file2 dir/file3 fio.dat; do echo "SHA2 $f $(sha256sum /mnt/v/$f | cut -d' ' -f1)"; done
umount /mnt/v
e2fsck -fn ${device} >/dev/null && echo "OK e2fsck clean"
sync
echo "DEVSHA $(sha256sum ${device} | cut -d' ' -f1)"
`;
}

export interface FioJob { name: string; rw: string; bs: string; iodepth: number; size: string; runtime: number }

/** The benchmark jobs: 4 KiB random write at iodepth 32 and 1 MiB sequential write. */
export const BENCH_JOBS: FioJob[] = [
  { name: 'randwrite-4k-qd32', rw: 'randwrite', bs: '4k', iodepth: 32, size: '256M', runtime: 15 },
  { name: 'write-1m-qd8', rw: 'write', bs: '1M', iodepth: 8, size: '256M', runtime: 15 },
];

/** fio on the raw device; prints `FIO <label> <job> <write bw KiB/s> <write IOPS>` (terse v3 fields 48, 49). */
export function fioBench(label: string, device = '/dev/nbd0'): string {
  return BENCH_JOBS.map((j) => `fio --name=${j.name} --filename=${device} --rw=${j.rw} --bs=${j.bs} --iodepth=${j.iodepth} \\
    --size=${j.size} --time_based --runtime=${j.runtime} --ramp_time=2 --ioengine=libaio --direct=1 \\
    --output-format=terse --terse-version=3 > /tmp/${label}-${j.name}.terse
echo "FIO ${label} ${j.name} $(cut -d';' -f49,48 /tmp/${label}-${j.name}.terse | tr ';' ' ')"
`).join('');
}

/**
 * Inside the guest: `georm export VOLUME --attach DEVICE` from the staged repository (/job/georm)
 * with the guest's node, in the background; waits until the kernel device has its size.
 */
export function geormAttach(volume: string, sizeMb: number, device = '/dev/nbd0', extra = ''): string {
  const dev = device.replace('/dev/', '');
  return `truncate -s ${sizeMb}M ${volume}
node /job/georm/bin/georm.js export ${volume} --attach ${device} --attach-timeout 30 --name vol ${extra} >/tmp/export.out 2>/tmp/export.err &
GEORM_PID=$!
i=0; while [ "$(cat /sys/block/${dev}/size)" = "0" ]; do
  i=$((i+1)); if [ $i -gt 600 ]; then echo "attach timed out"; cat /tmp/export.err; exit 1; fi
  if ! kill -0 $GEORM_PID 2>/dev/null; then echo "georm export exited"; cat /tmp/export.out /tmp/export.err; exit 1; fi
  sleep 0.1
done
echo "OK attached ${device} $(cat /sys/block/${dev}/size) sectors"
`;
}

/** Stops the attached export with SIGTERM (detach: flush, disconnect) and checks the device let go. */
export function geormDetach(device = '/dev/nbd0'): string {
  const dev = device.replace('/dev/', '');
  return `kill -TERM $GEORM_PID
set +e; wait $GEORM_PID; rc=$?; set -e
echo "EXPORT-EXIT $rc"
cat /tmp/export.err | tail -5
[ "$(cat /sys/block/${dev}/size)" = "0" ] && echo "OK detached"
`;
}

/**
 * The same connection through an /etc/nbdtab line (`nbd-client nbd0`), as the README documents. The
 * host is a name (nbd-client's nbdtab parser rejects dotted addresses in some versions) and the
 * port the default 10809 (some versions ignore `port=`): the VM forwards 10.0.2.100:10809 to the server.
 */
export function nbdtabConnect(exportName: string, dev = 'nbd0'): string {
  return `mkdir -p /etc
echo "10.0.2.100 nbdhost" >> /etc/hosts
echo "${dev} nbdhost ${exportName} bs=4096,timeout=30" > /etc/nbdtab
nbd-client ${dev}
echo "OK nbd-client connected via nbdtab"
`;
}

/**
 * Attaches again, then kills georm with SIGKILL: the device must stop serving at once (reads end
 * with an error or EOF, never hang) and be released. Prints `CRASH-READ <bytes> <rc>` and `CRASH-SIZE`.
 */
export function crashAttached(volume: string, sizeMb: number, device = '/dev/nbd0'): string {
  const dev = device.replace('/dev/', '');
  return `${geormAttach(volume, sizeMb, device)}kill -9 $GEORM_PID
set +e; wait $GEORM_PID; set -e
n=$(timeout 90 dd if=${device} bs=4096 count=1 iflag=direct 2>/dev/null | wc -c); rc=$?
echo "CRASH-READ $n $rc"
i=0; while [ "$(cat /sys/block/${dev}/size)" != "0" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
echo "CRASH-SIZE $(cat /sys/block/${dev}/size)"
`;
}

/**
 * Inside the guest, after `georm gmd run … >/tmp/gmd.out 2>/tmp/gmd.err &` with GEORM_PID set: waits
 * until the GMD attached /dev/nbd0 (the kernel device has its size), failing fast if it exited.
 */
export function gmdWaitAttached(device = '/dev/nbd0'): string {
  const dev = device.replace('/dev/', '');
  return `i=0; while [ "$(cat /sys/block/${dev}/size)" = "0" ]; do
  i=$((i+1)); if [ $i -gt 1200 ]; then echo "attach timed out"; tail -20 /tmp/gmd.err; exit 1; fi
  if ! kill -0 $GEORM_PID 2>/dev/null; then echo "georm gmd exited"; tail -20 /tmp/gmd.out /tmp/gmd.err; exit 1; fi
  sleep 0.1
done
`;
}

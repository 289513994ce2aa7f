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

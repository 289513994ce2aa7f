/**
 * What `npm run mutate` mutates, and which fast tests judge each part. One entry per group of
 * modules; stryker.config.mjs turns the group named by GEORM_MUTATE_GROUP into a Stryker run.
 *
 * Why groups: Stryker's tap runner knows only the test files of one run. Each group pairs a set of
 * source files with the unit-level tests that exercise them in-process, so per-test coverage can
 * pick, for every mutant, the few test files that reach it. The end-to-end tests (daemons in
 * child processes, namespaces, VMs) are left out: their code runs in children, which report no
 * coverage to Stryker, and each takes minutes. Mutants only those tests reach come out as
 * "no coverage" and are counted separately in the report; the fixed CI mutant set
 * (scripts/mutate/ci.ts) covers the most important of them against the end-to-end tests.
 *
 * The mutate globs name directories, not files, so that splitting device.ts, transport.ts or
 * statemap.ts into smaller files keeps them covered; the exclusions are display, CLI, daemon
 * wiring and test-only code, where a mutant cannot lose data.
 */
export interface MutateGroup {
  /** Name used on the command line (`npm run mutate -- statemap`) and for report files. */
  name: string;
  /** What the group holds, for the report. */
  what: string;
  /** Stryker `mutate` globs (source files, relative to the repository root). */
  mutate: string[];
  /** Compiled test files (tap runner `testFiles`). */
  tests: string[];
  /**
   * Top-level tests (name prefixes) left out of the run: those that only exercise size limits and,
   * with every mutant switched in and counted, take minutes instead of seconds.
   */
  skipTests?: string[];
}

export const GROUPS: MutateGroup[] = [
  {
    name: 'statemap',
    what: 'state map: marking before issue, group commit, activity log, cell format',
    mutate: ['src/statemap/**/*.ts', '!src/statemap/show.ts', '!src/statemap/dump.ts', '!src/statemap/index.ts'],
    tests: ['dist/test/statemap/*.test.js'],
    skipTests: ['no 32 GB limit'],
  },
  {
    name: 'geomessage',
    what: 'GeoMessage: packet format and authentication, replay window, ordering, dedup, retransmission',
    mutate: [
      'src/geomessage/**/*.ts',
      // the UDP socket layer (native batch sockets, GSO), the WAN emulator, counters and their CLI
      '!src/geomessage/wire.ts', '!src/geomessage/wanem.ts', '!src/geomessage/netstat.ts',
      '!src/geomessage/stats.ts', '!src/geomessage/rtt.ts', '!src/geomessage/errors.ts',
      '!src/geomessage/index.ts',
    ],
    tests: [
      'dist/test/geomessage/packet.test.js', 'dist/test/geomessage/transport.test.js',
      'dist/test/geomessage/inflight.test.js', 'dist/test/geomessage/wanem.test.js',
      'dist/test/geomessage/wire.test.js',
    ],
  },
  {
    name: 'gmd',
    what: 'GMD: write path, batcher, range lock, clean gate, resync, start rules (unit-level tests only)',
    mutate: [
      'src/gmd/**/*.ts',
      // CLI, daemon wiring, demo, control socket framing and config loading
      '!src/gmd/demo.ts', '!src/gmd/runner.ts', '!src/gmd/admin.ts', '!src/gmd/control.ts',
      '!src/gmd/cluster-config.ts', '!src/gmd/format.ts',
    ],
    tests: [
      'dist/test/gmd/batcher.test.js', 'dist/test/gmd/clean-gate.test.js',
      'dist/test/gmd/rangelock.test.js', 'dist/test/gmd/zero-runs.test.js',
      'dist/test/gmd/batcher-edges.test.js', 'dist/test/gmd/clean-gate-edges.test.js', 'dist/test/gmd/rangelock-edges.test.js',
      'dist/test/gmd/stop-drain.test.js', 'dist/test/gmd/join-window.test.js',
    ],
  },
];

export function groupNamed(name: string): MutateGroup {
  const g = GROUPS.find((x) => x.name === name);
  if (!g) throw new Error(`unknown mutation group '${name}' (known: ${GROUPS.map((x) => x.name).join(', ')})`);
  return g;
}

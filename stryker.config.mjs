// Stryker configuration for `npm run mutate` (scripts/mutate/full.ts runs one Stryker per group).
// The group (which sources, which tests) comes from GEORM_MUTATE_GROUP; the groups live in
// scripts/mutate/groups.ts, compiled by `npm run build` before this file is read.
import { groupNamed } from './dist/scripts/mutate/groups.js';

const group = groupNamed(process.env.GEORM_MUTATE_GROUP ?? 'statemap');
const out = process.env.GEORM_MUTATE_OUT ?? 'artifacts/mutation';

// The test files run as plain `node file.js` under Stryker: tap's filter plugin reads TAP_GREP, and
// one pattern that refuses the skipped names leaves every other top-level test running. tap's own
// per-file timeout is raised so that Stryker's timeout (below) is the one that judges a hang.
const escape = (s) => s.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
if (group.skipTests?.length) process.env.TAP_GREP = `/^(?!(${group.skipTests.map(escape).join('|')}))/`;
process.env.TAP_TIMEOUT = '900';

/** @type {import('@stryker-mutator/api/core').PartialStrykerOptions} */
export default {
  mutate: group.mutate,
  testRunner: 'tap',
  // Tests run from tsc's output, as in `npm test`: the sandbox is compiled once with every mutant
  // switched in (Stryker adds `// @ts-nocheck` to the mutated files so tsc emits them).
  buildCommand: 'npx tsc -p tsconfig.json',
  tap: { testFiles: group.tests, forceBail: true },
  // Per test file: each mutant runs only the test files that reached it.
  coverageAnalysis: 'perTest',
  // A 2-core machine shared with other work: two sandboxes at most, generous timeouts (a mutant
  // that hangs a test is reported as a timeout, which counts as detected).
  concurrency: Number(process.env.GEORM_MUTATE_CONCURRENCY ?? 2),
  timeoutMS: 30000,
  timeoutFactor: 2,
  // Not copied to the sandboxes: build output (rebuilt there), earlier reports, other runs' sandboxes.
  ignorePatterns: ['/dist', '/artifacts', '/.tap', '/coverage', '/.stryker-tmp*'],
  tempDirName: '.stryker-tmp',
  cleanTempDir: 'always',
  // Incremental: a later run reuses the results of mutants whose code and covering tests are unchanged.
  incremental: true,
  incrementalFile: `${out}/${group.name}.incremental.json`,
  reporters: ['json', 'html', 'clear-text', 'progress-append-only'],
  jsonReporter: { fileName: `${out}/${group.name}.json` },
  htmlReporter: { fileName: `${out}/${group.name}.html` },
  clearTextReporter: { allowColor: false, logTests: false, maxTestsToLog: 0 },
  thresholds: { high: 85, low: 70, break: null },
  logLevel: 'info',
  fileLogLevel: 'off',
};

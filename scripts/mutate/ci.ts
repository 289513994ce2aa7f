/**
 * Runs the fixed CI mutant set (scripts/mutate/ci-mutants.ts): for each mutant, applies its edits to
 * a temporary copy of the compiled tree, runs the tests named for it against that copy and requires
 * one of them to fail. The working tree is never changed: the copy lives under the system's temp
 * directory and is removed at the end, also on failure.
 *
 * Outcomes per mutant:
 *   KILLED    a named test reported a failed assertion (or hung past the time limit)
 *   SURVIVED  every named test passed with the mutant in: the tests no longer catch that bug
 *   STALE     an edit's code is not found (or found more than once) under dist/src: "mutant no
 *             longer applies, update it" in ci-mutants.ts
 *   PENDING   its killing test is not on this branch yet (edits still checked to apply)
 * The last line is the machine-readable summary `.ci/run` adds to its totals:
 *   # ci-mutants: { total: T, pass: KILLED, fail: SURVIVED+STALE, skip: PENDING }
 * Exit code 0 only when nothing survived and nothing is stale.
 *
 * npm run mutate:ci [-- ID…]   (`--list` prints the set; `--from FILE.json` runs the mutants in
 *                               that file instead: a JSON array of CiMutant, for trying a survivor
 *                               of the full run against a new test the same way)
 */
import { spawn, spawnSync } from 'node:child_process';
import { cpSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CI_MUTANTS, type CiMutant, type KillingTest } from './ci-mutants.js';
import { applyEdits, locateEdits, type Located } from './apply.js';

/** Repository root (this file runs as dist/scripts/mutate/ci.js). */
const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
/** Per test file: longer than any of the named tests takes on a loaded 2-core machine. */
const TEST_TIMEOUT_MS = Number(process.env.GEORM_MUTANT_TEST_TIMEOUT_MS ?? 600_000);

type Outcome = 'KILLED' | 'SURVIVED' | 'STALE' | 'PENDING';
interface Result { id: string; outcome: Outcome; detail: string; seconds: number }

/**
 * A copy of the tree the tests run from: dist/ copied (it gets mutated), bin/ and package.json
 * copied (bin/georm.js imports ../dist, which must be the copy), everything else only read by the
 * tests linked. Tests find the root from their own location (test/helpers/env.ts), so they and the
 * daemons they start all run the copy.
 */
function makeCopy(): string {
  const dir = mkdtempSync(join(tmpdir(), 'georm-ci-mutants-'));
  cpSync(join(ROOT, 'dist'), join(dir, 'dist'), { recursive: true });
  cpSync(join(ROOT, 'bin'), join(dir, 'bin'), { recursive: true });
  cpSync(join(ROOT, 'package.json'), join(dir, 'package.json'));
  for (const name of ['node_modules', 'build', 'test', 'scripts', 'nbd', 'native-bindings']) {
    if (existsSync(join(ROOT, name))) symlinkSync(join(ROOT, name), join(dir, name));
  }
  return dir;
}

interface TestRun { failed: string[]; skipped: string[]; timedOut: boolean; exitCode: number | null; tail: string }

/** Runs one compiled test file as `node FILE` (tap prints TAP); kills its process group on timeout. */
function runTest(copy: string, t: KillingTest): Promise<TestRun> {
  return new Promise((resolveRun) => {
    const env: NodeJS.ProcessEnv = { ...process.env, TAP_TIMEOUT: String(Math.ceil(TEST_TIMEOUT_MS / 1000)) };
    if (t.grep?.length) env.TAP_GREP = t.grep.join('\n');
    const child = spawn(process.execPath, [join(copy, t.file)], { cwd: copy, env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (b: Buffer) => { out += b.toString(); });
    child.stderr.on('data', (b: Buffer) => { out += b.toString(); });
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      try { process.kill(-child.pid!, 'SIGKILL'); } catch { /* already gone */ }
    }, TEST_TIMEOUT_MS);
    child.on('close', (code) => {
      clearTimeout(timer);
      // Failed assertions at any depth: tap indents subtests by four spaces.
      const failed = out.split('\n').filter((l) => /^\s*not ok \d+/.test(l)).map((l) => l.trim());
      // Skipped tests (a missing tool, not root): a mutant they should kill then survives, and says why.
      const skipped = out.split('\n').filter((l) => /^\s*ok \d+ .*# SKIP(?! filter)/.test(l)).map((l) => l.trim());
      resolveRun({ failed, skipped, timedOut, exitCode: code, tail: out.split('\n').slice(-15).join('\n') });
    });
  });
}

async function runMutant(m: CiMutant, copy: string): Promise<Result> {
  const started = Date.now();
  const secs = () => Math.round((Date.now() - started) / 100) / 10;
  const srcDir = join(copy, 'dist', 'src');
  const read = (f: string) => readFileSync(f, 'utf8');
  let located: Located[];
  try {
    located = locateEdits(m.edits, srcDir, read);
  } catch (e) {
    return { id: m.id, outcome: 'STALE', detail: (e as Error).message, seconds: secs() };
  }
  if (m.pending) return { id: m.id, outcome: 'PENDING', detail: `applies; not run: ${m.pending}`, seconds: secs() };
  if (m.tests.length === 0) return { id: m.id, outcome: 'SURVIVED', detail: 'no killing test named', seconds: secs() };
  const originals = applyEdits(located, read);
  try {
    // A replacement that does not parse would "kill" the mutant by crashing the test file.
    for (const file of originals.keys()) {
      const check = spawnSync(process.execPath, ['--check', file], { encoding: 'utf8' });
      if (check.status !== 0) return { id: m.id, outcome: 'STALE', detail: `the mutated code does not parse, fix its replace: ${check.stderr.trim().split('\n').slice(0, 4).join(' ')}`, seconds: secs() };
    }
    const passed: string[] = [];
    const skipped: string[] = [];
    for (const t of m.tests) {
      const r = await runTest(copy, t);
      const name = `${t.file.replace(/^dist\//, '')}${t.grep ? ` (${t.grep.join(', ')})` : ''}`;
      if (r.failed.length > 0) return { id: m.id, outcome: 'KILLED', detail: `by ${name}: ${r.failed.slice(0, 3).map((l) => (l.length > 200 ? `${l.slice(0, 200)}…` : l)).join(' | ')}`, seconds: secs() };
      if (r.timedOut) return { id: m.id, outcome: 'KILLED', detail: `by ${name}: timed out after ${TEST_TIMEOUT_MS / 1000} s`, seconds: secs() };
      if (r.exitCode !== 0) {
        // A non-zero exit without a failed assertion: the file crashed. Counted as caught (the
        // unmutated file passes in `npm test` before this runs), with the output to judge it.
        return { id: m.id, outcome: 'KILLED', detail: `by ${name}: exit ${r.exitCode} without a failed assertion:\n${r.tail}`, seconds: secs() };
      }
      passed.push(name);
      skipped.push(...r.skipped);
    }
    const why = skipped.length ? ` (skipped there: ${skipped.join(' | ')})` : '';
    return { id: m.id, outcome: 'SURVIVED', detail: `passed with the mutant in: ${passed.join('; ')}${why}`, seconds: secs() };
  } finally {
    for (const [file, text] of originals) writeFileSync(file, text);
  }
}

async function main(): Promise<number> {
  let args = process.argv.slice(2);
  let set = CI_MUTANTS;
  const from = args.indexOf('--from');
  if (from >= 0) {
    set = JSON.parse(readFileSync(args[from + 1]!, 'utf8')) as CiMutant[];
    args = args.filter((_, i) => i !== from && i !== from + 1);
  }
  if (args.includes('--list')) {
    for (const m of set) console.log(`${m.id}${m.pending ? ' (pending)' : ''}\n    ${m.what}\n    ${m.rule}\n    tests: ${m.tests.map((t) => t.file).join(', ') || '-'}`);
    return 0;
  }
  const unknown = args.filter((a) => !set.some((m) => m.id === a));
  if (unknown.length) { console.error(`unknown mutant(s): ${unknown.join(', ')}`); return 2; }
  const chosen = args.length ? set.filter((m) => args.includes(m.id)) : set;
  if (!existsSync(join(ROOT, 'dist', 'src'))) { console.error('dist/src missing: run `npm run build` first'); return 2; }

  const copy = makeCopy();
  const results: Result[] = [];
  const cleanup = () => rmSync(copy, { recursive: true, force: true });
  process.on('SIGINT', () => { cleanup(); process.exit(130); });
  process.on('SIGTERM', () => { cleanup(); process.exit(143); });
  try {
    console.log(`# CI mutant set: ${chosen.length} mutants, tests run from a mutated copy in ${copy}`);
    for (const m of chosen) {
      const r = await runMutant(m, copy);
      results.push(r);
      console.log(`${r.outcome.padEnd(8)} ${r.id} (${r.seconds} s): ${r.detail}`);
    }
  } finally {
    cleanup();
  }
  const count = (o: Outcome) => results.filter((r) => r.outcome === o).length;
  const bad = count('SURVIVED') + count('STALE');
  if (count('PENDING')) console.log(`# ${count('PENDING')} mutant(s) PENDING: not yet checked by any test (see ci-mutants.ts)`);
  console.log(`# ci-mutants: { total: ${results.length}, pass: ${count('KILLED')}, fail: ${bad}, skip: ${count('PENDING')} }`);
  return bad === 0 ? 0 : 1;
}

process.exitCode = await main();

/**
 * The CI mutant set stays applicable: every mutant's edits are found exactly once in today's compiled
 * sources and the mutated files still parse, so a refactor that moves the code fails here, in
 * `npm test`, with "mutant no longer applies, update it" — not later as a mutant that silently
 * tests nothing (or is "killed" by a syntax error). Also checks the matcher itself: whitespace is
 * ignored (tsc re-flows one-line ifs), a missing or repeated snippet is refused.
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CI_MUTANTS } from '../../scripts/mutate/ci-mutants.js';
import { applyEdits, locateEdits } from '../../scripts/mutate/apply.js';
import { ROOT, tempDir } from '../helpers/env.js';

const read = (f: string) => readFileSync(f, 'utf8');

t.test('every CI mutant applies once to dist/src and the mutated code parses', async (t) => {
  const srcDir = join(ROOT, 'dist', 'src');
  const { dir, cleanup } = tempDir('georm-ci-mutants-test-');
  t.teardown(cleanup);
  t.ok(CI_MUTANTS.length >= 10, `the set has ${CI_MUTANTS.length} mutants`);
  t.equal(new Set(CI_MUTANTS.map((m) => m.id)).size, CI_MUTANTS.length, 'ids are unique');
  for (const m of CI_MUTANTS) {
    let located;
    try {
      located = locateEdits(m.edits, srcDir, read);
    } catch (e) {
      t.fail(`${m.id}: ${(e as Error).message}`);
      continue;
    }
    t.equal(located.length, m.edits.length, `${m.id}: every edit found`);
    t.ok(m.pending !== undefined || m.tests.length > 0, `${m.id}: names a killing test (or is marked pending)`);
    // Mutate copies (named .mjs so that node --check parses them as modules), never dist itself.
    const copies = new Map<string, string>();
    const inCopy = located.map((l) => {
      let c = copies.get(l.file);
      if (!c) {
        c = join(dir, `${m.id}-${copies.size}.mjs`);
        writeFileSync(c, read(l.file));
        copies.set(l.file, c);
      }
      return { ...l, file: c };
    });
    applyEdits(inCopy, read);
    for (const c of copies.values()) {
      const check = spawnSync(process.execPath, ['--check', c], { encoding: 'utf8' });
      t.equal(check.status, 0, `${m.id}: the mutated file parses ${check.stderr.split('\n').slice(0, 3).join(' ')}`);
    }
  }
});

t.test('the matcher ignores whitespace and refuses a missing or repeated snippet', async (t) => {
  const { dir, cleanup } = tempDir('georm-ci-mutants-test-');
  t.teardown(cleanup);
  mkdirSync(join(dir, 'sub'));
  writeFileSync(join(dir, 'sub', 'a.js'), 'function f(a) {\n    if (a > 1)\n        return g(a);\n    return 0;\n}\nconst twice = 1;\n');
  writeFileSync(join(dir, 'b.js'), 'const twice = 1;\n');

  const [hit] = locateEdits([{ find: 'if (a > 1) return g(a);', replace: 'if (false) return g(a);' }], dir, read);
  t.ok(hit!.file.endsWith('a.js'), 'found across the re-flowed lines, in the file it lives in');
  const originals = applyEdits([hit!], read);
  t.match(read(join(dir, 'sub', 'a.js')), /if \(false\) return g\(a\);\n    return 0;/, 'replaced in place');
  t.equal(originals.get(hit!.file), 'function f(a) {\n    if (a > 1)\n        return g(a);\n    return 0;\n}\nconst twice = 1;\n', 'original kept for restoring');

  t.throws(() => locateEdits([{ find: 'if (a > 2) return g(a);', replace: '' }], dir, read),
    /mutant no longer applies, update it .*not found/, 'a snippet that is gone fails loudly');
  t.throws(() => locateEdits([{ find: 'const twice = 1;', replace: '' }], dir, read),
    /mutant no longer applies, update it .*found 2 times/, 'an ambiguous snippet fails loudly');
});

/**
 * Finding and applying the CI mutants' edits in compiled JavaScript (used by ci.ts, and by
 * test/unit/ci-mutants.test.ts, which checks on every `npm test` that each edit still applies).
 */
import { readdirSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import type { MutantEdit } from './ci-mutants.js';

/** A regular expression for `find` that ignores whitespace (tsc re-flows statements). */
export function looseRegExp(find: string): RegExp {
  const chars = [...find.replace(/\s+/g, '')];
  return new RegExp(chars.map((c) => c.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')).join('\\s*'), 'g');
}

function jsFiles(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...jsFiles(p));
    else if (e.name.endsWith('.js')) out.push(p);
  }
  return out;
}

export interface Located { file: string; start: number; end: number; edit: MutantEdit }

/**
 * Finds each edit in the compiled sources under `srcDir`. Throws "mutant no longer applies, update
 * it" when an edit's code is not found, or found more than once (which copy to break is then unclear).
 */
export function locateEdits(edits: readonly MutantEdit[], srcDir: string, read: (f: string) => string): Located[] {
  const files = jsFiles(srcDir);
  return edits.map((edit) => {
    const re = looseRegExp(edit.find);
    const hits: Array<{ file: string; start: number; end: number }> = [];
    for (const file of files) {
      for (const h of read(file).matchAll(re)) hits.push({ file, start: h.index, end: h.index + h[0].length });
    }
    if (hits.length !== 1) {
      const where = hits.length === 0 ? 'not found' : `found ${hits.length} times (${hits.map((h) => relative(srcDir, h.file)).join(', ')})`;
      throw new Error(`mutant no longer applies, update it in scripts/mutate/ci-mutants.ts: the code \`${edit.find}\` is ${where} under dist/src`);
    }
    return { ...hits[0]!, edit };
  });
}

/** Applies the located edits (back to front within a file); returns the original texts to restore. */
export function applyEdits(located: Located[], read: (f: string) => string): Map<string, string> {
  const originals = new Map<string, string>();
  const byFile = new Map<string, Located[]>();
  for (const l of located) byFile.set(l.file, [...(byFile.get(l.file) ?? []), l]);
  for (const [file, ls] of byFile) {
    const text = read(file);
    originals.set(file, text);
    let out = text;
    for (const l of [...ls].sort((a, b) => b.start - a.start)) out = out.slice(0, l.start) + l.edit.replace + out.slice(l.end);
    writeFileSync(file, out);
  }
  return originals;
}


/**
 * `npm run mutate`: the full Stryker run over the safety-critical code, one Stryker run per group of
 * scripts/mutate/groups.ts, then one report. Not part of CI (it takes about an hour on two cores);
 * CI runs the fixed mutant set of scripts/mutate/ci.ts instead.
 *
 * Writes artifacts/mutation/<group>.json and .html (Stryker's reports), artifacts/mutation/report.md
 * (score per module and every surviving mutant) and prints the per-module table.
 * Score of a module = detected / (detected + survived), detected = killed + timed out (a mutant that
 * makes a test hang is caught). Mutants no test of the group reaches ("no coverage": code only the
 * end-to-end tests run) are counted apart and not in the score.
 *
 * npm run mutate [-- GROUP…]          run these groups (default: all)
 * npm run mutate -- --report-only     rebuild report.md from the JSON reports already there
 * env GEORM_MUTATE_CONCURRENCY (default 2)
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { GROUPS, groupNamed } from './groups.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const OUT = join(ROOT, 'artifacts', 'mutation');

/** The part of Stryker's JSON report (mutation-testing-report-schema) read here. */
interface StrykerReport {
  files: Record<string, { mutants: Array<{
    id: string; mutatorName: string; replacement?: string; status: string;
    location: { start: { line: number; column: number } };
  }> }>;
}

interface ModuleScore {
  group: string; file: string; killed: number; timeout: number; survived: number; noCoverage: number; other: number;
  survivors: string[];
}

function scoreOf(m: ModuleScore): number | null {
  const detected = m.killed + m.timeout;
  return detected + m.survived === 0 ? null : (100 * detected) / (detected + m.survived);
}

function readGroup(name: string): ModuleScore[] | null {
  const path = join(OUT, `${name}.json`);
  if (!existsSync(path)) return null;
  const report = JSON.parse(readFileSync(path, 'utf8')) as StrykerReport;
  return Object.entries(report.files).sort(([a], [b]) => a.localeCompare(b)).map(([file, f]) => {
    const m: ModuleScore = { group: name, file, killed: 0, timeout: 0, survived: 0, noCoverage: 0, other: 0, survivors: [] };
    for (const x of f.mutants) {
      switch (x.status) {
        case 'Killed': m.killed++; break;
        case 'Timeout': m.timeout++; break;
        case 'Survived':
          m.survived++;
          m.survivors.push(`${file}:${x.location.start.line}:${x.location.start.column} ${x.mutatorName} → \`${(x.replacement ?? '').replace(/\s+/g, ' ').slice(0, 100)}\``);
          break;
        case 'NoCoverage': m.noCoverage++; break;
        default: m.other++; // CompileError, RuntimeError, Ignored
      }
    }
    return m;
  });
}

function report(groupNames: string[]): string {
  const lines: string[] = [];
  lines.push(`# Mutation testing report (${new Date().toISOString()})`, '');
  lines.push('score = (killed + timeout) / (killed + timeout + survived); no coverage = reached by no test of the group (end-to-end only), not scored', '');
  lines.push('| group | module | killed | timeout | survived | no coverage | other | score |', '|---|---|---|---|---|---|---|---|');
  const all: ModuleScore[] = [];
  const missing: string[] = [];
  for (const g of groupNames) {
    const ms = readGroup(g);
    if (!ms) { missing.push(g); continue; }
    all.push(...ms);
    for (const m of ms) {
      const s = scoreOf(m);
      lines.push(`| ${g} | ${m.file} | ${m.killed} | ${m.timeout} | ${m.survived} | ${m.noCoverage} | ${m.other} | ${s === null ? '-' : `${s.toFixed(1)}%`} |`);
    }
  }
  for (const g of missing) lines.push(`| ${g} | (not run: no ${g}.json) | | | | | | |`);
  lines.push('', '## Surviving mutants', '');
  for (const m of all) for (const s of m.survivors) lines.push(`- ${s}`);
  return lines.join('\n') + '\n';
}

function main(): number {
  const args = process.argv.slice(2);
  const reportOnly = args.includes('--report-only');
  const names = args.filter((a) => !a.startsWith('--'));
  const groups = names.length ? names.map((n) => groupNamed(n).name) : GROUPS.map((g) => g.name);
  mkdirSync(OUT, { recursive: true });
  let failed = 0;
  if (!reportOnly) {
    for (const g of groups) {
      console.log(`# mutate: group ${g} (${groupNamed(g).what})`);
      const r = spawnSync('npx', ['stryker', 'run', 'stryker.config.mjs'], {
        cwd: ROOT, stdio: 'inherit', env: { ...process.env, GEORM_MUTATE_GROUP: g, GEORM_MUTATE_OUT: OUT },
      });
      if (r.status !== 0) { failed++; console.log(`# mutate: group ${g}: stryker exited ${r.status ?? r.signal}`); }
    }
  }
  const text = report(reportOnly && !names.length ? GROUPS.map((g) => g.name) : groups);
  writeFileSync(join(OUT, 'report.md'), text);
  console.log(text.split('\n## Surviving mutants')[0]);
  console.log(`# report: ${join(OUT, 'report.md')} (surviving mutants listed there)`);
  return failed === 0 ? 0 : 1;
}

process.exitCode = main();

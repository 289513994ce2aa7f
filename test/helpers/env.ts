import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Repository root (tests run from dist/test/…, so walk up past dist). */
export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
/** The georm CLI entry point. */
export const GEORM_BIN = join(ROOT, 'bin', 'georm.js');

const toolCache = new Map<string, boolean>();
/** True when `cmd` is on PATH. */
export function hasTool(cmd: string): boolean {
  let ok = toolCache.get(cmd);
  if (ok === undefined) {
    ok = spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
    toolCache.set(cmd, ok);
  }
  return ok;
}

/**
 * The reason a test must skip when a tool is missing, or false when all are there.
 * Usage: `t.test('x', { skip: missingTools('nbdinfo') }, async t => …)` — tap reports SKIP with the reason.
 */
export function missingTools(...cmds: string[]): string | false {
  const missing = cmds.filter((c) => !hasTool(c));
  return missing.length ? `missing tools: ${missing.join(', ')} (scripts/install-deps.sh installs them as root)` : false;
}

/**
 * Environment for nbdsh: Debian's python3 carries the libnbd module, another python3 earlier in PATH
 * (pyenv, a venv) may not.
 */
export function nbdshEnv(): NodeJS.ProcessEnv {
  return { ...process.env, PATH: `/usr/bin:/bin:${process.env.PATH}` };
}

/** Why a root-only test must skip, or false when running as root. */
export function needsRoot(): string | false {
  return process.getuid?.() === 0 ? false : 'needs root (loop devices, FUSE mounts, network namespaces)';
}

/** A fresh temporary directory removed by the returned cleanup. */
export function tempDir(prefix = 'georm-test-'): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/**
 * The few Pacemaker command-line tools the agent and the fence verbs run (crm_attribute,
 * crm_node), with a bounded wait each. Outside a cluster they fail at once (exit 102: no CIB).
 */
import { spawn, spawnSync } from 'node:child_process';

export interface CrmResult { code: number; stdout: string; stderr: string }

/** Exit code Pacemaker's tools use for "no such object" (CRM_EX_NOSUCH), e.g. an absent attribute. */
export const CRM_EX_NOSUCH = 105;

export function crm(cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env, timeoutMs = 15000): CrmResult {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: timeoutMs, env });
  return { code: r.status ?? (r.error ? 127 : 1), stdout: r.stdout ?? '', stderr: (r.stderr ?? '') + (r.error ? String(r.error.message) : '') };
}

/** Whether this node's partition has quorum now (crm_node -q prints 1). False when it cannot tell. */
export function partitionHasQuorum(): { quorate: boolean; why: string } {
  const r = crm('crm_node', ['-q']);
  if (r.code !== 0) return { quorate: false, why: `crm_node -q failed (${r.code}): ${r.stderr.trim()}` };
  const v = r.stdout.trim();
  return { quorate: v === '1', why: v === '1' ? 'quorate' : `crm_node -q says ${v || 'nothing'}: this partition has no quorum` };
}

/** crm() without blocking the event loop (the GMD process records outdated peers while serving I/O). */
export function crmAsync(cmd: string, args: string[], timeoutMs = 15000): Promise<CrmResult> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '', stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => { stdout += d; });
    child.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d; });
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', (e) => { clearTimeout(timer); resolve({ code: 127, stdout, stderr: stderr + e.message }); });
    child.on('close', (code) => { clearTimeout(timer); resolve({ code: code ?? 1, stdout, stderr }); });
  });
}

/** partitionHasQuorum() without blocking the event loop. */
export async function partitionHasQuorumAsync(): Promise<{ quorate: boolean; why: string }> {
  const r = await crmAsync('crm_node', ['-q']);
  if (r.code !== 0) return { quorate: false, why: `crm_node -q failed (${r.code}): ${r.stderr.trim()}` };
  const v = r.stdout.trim();
  return { quorate: v === '1', why: v === '1' ? 'quorate' : `crm_node -q says ${v || 'nothing'}: this partition has no quorum` };
}

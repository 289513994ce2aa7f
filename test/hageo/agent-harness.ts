/**
 * Test harness for ocf:georm:gmd: a real two-machine georm cluster on loopback (TestCluster's
 * cluster file, volumes and state maps), the agent installed under a scratch root with
 * `georm install-agents --root`, and a way to run one agent action for either machine. The GMD
 * processes the agent starts are detached; cleanup ends them by the pids in their pid files.
 */
import { readFileSync } from 'node:fs';
import { chmod, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { TestCluster, type ClusterOptions } from '../gmd/cluster.js';
import type { GmdMode } from '../../src/gmd/protocol.js';
import type { HaStatus } from '../../src/gmd/promotion.js';
import { callControl } from '../../src/gmd/control.js';
import { GEORM_BIN } from '../helpers/env.js';
import { runCmd } from '../helpers/proc.js';

export interface ActionResult { code: number; stdout: string; stderr: string }

export class AgentCluster {
  readonly agent: string;
  private constructor(readonly c: TestCluster) {
    this.agent = join(c.dir, 'root', 'usr/lib/ocf/resource.d/georm/gmd');
  }

  /** `hageo`: lines of a `[hageo]` table appended to the cluster file (e.g. 'fencing = "none"'). */
  static async create(mode: GmdMode, size = 4 << 20, extra: Partial<ClusterOptions> = {}, hageo: string[] = []): Promise<AgentCluster> {
    const c = await TestCluster.create({ mode, size, ...extra });
    const a = new AgentCluster(c);
    try {
      if (hageo.length) {
        // With a [hageo] table the file must suit Corosync too: one address per machine on each
        // network. beta moves to 127.0.1.x (still loopback).
        const text = await readFile(c.cfgPath, 'utf8');
        const moved = text.split('[[machine]]').map((block) => /name = "beta"/.test(block) ? block.replaceAll('"127.0.0.', '"127.0.1.') : block).join('[[machine]]');
        await writeFile(c.cfgPath, `${moved}\n[hageo]\n${hageo.join('\n')}\n`);
      }
      // ocf-tester runs meta-data as nobody: the agent and georm must be reachable for it.
      await chmod(c.dir, 0o755);
      const r = await runCmd(process.execPath, [GEORM_BIN, 'install-agents', '--root', join(c.dir, 'root')], { timeoutMs: 30000 });
      if (r.code !== 0) throw new Error(`install-agents failed: ${r.stderr}`);
    } catch (e) { await c.cleanup(); throw e; }
    return a;
  }

  /** OCF environment for machine m, as Pacemaker would give it. */
  env(m: string, extra: Record<string, string> = {}): Record<string, string> {
    return {
      OCF_ROOT: '/usr/lib/ocf', OCF_RESOURCE_INSTANCE: 'gmd', OCF_RESKEY_gmd: this.c.gmd,
      OCF_RESKEY_config: this.c.cfgPath, OCF_RESKEY_machine: m, OCF_RESKEY_CRM_meta_interval: '0', ...extra,
    };
  }

  async action(m: string, action: string, extra: Record<string, string> = {}): Promise<ActionResult> {
    const r = await runCmd(this.agent, [action], { env: { ...process.env, ...this.env(m, extra) }, timeoutMs: 300000 });
    return { code: r.code ?? -1, stdout: r.stdout, stderr: r.stderr };
  }

  haStatus(m: string): Promise<HaStatus> {
    return callControl(this.c.sock[m]!, 'ha-status', {}, 15000) as Promise<HaStatus>;
  }

  pidFile(m: string): string { return join(this.c.dir, 'run', m, `${this.c.gmd}.pid`); }
  logFile(m: string): string { return join(this.c.dir, 'run', m, `${this.c.gmd}.log`); }

  pid(m: string): number | null {
    try { return Number(readFileSync(this.pidFile(m), 'utf8').trim()) || null; } catch { return null; }
  }

  log(m: string): string { try { return readFileSync(this.logFile(m), 'utf8').slice(-3000); } catch { return ''; } }

  /** Ends every GMD process the agent started (by pid), then the cluster's files. */
  async cleanup(): Promise<void> {
    for (const m of this.c.machines) {
      const pid = this.pid(m);
      if (pid) { try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ } }
    }
    await this.c.cleanup();
  }
}

/**
 * The OCF resource-agent API as ocf:georm:gmd sees it: exit codes, the action names, the
 * parameters (OCF_RESKEY_*) and the log line format. Pacemaker keeps an agent's stderr in its log.
 */
import { spawnSync } from 'node:child_process';
import { hostname } from 'node:os';

/** OCF exit codes (resource-agent API 1.1, Pacemaker's extensions 8/9/190/191). */
export const OCF = {
  SUCCESS: 0,
  ERR_GENERIC: 1,
  ERR_ARGS: 2,
  ERR_UNIMPLEMENTED: 3,
  ERR_PERM: 4,
  ERR_INSTALLED: 5,
  ERR_CONFIGURED: 6,
  NOT_RUNNING: 7,
  RUNNING_PROMOTED: 8,
  FAILED_PROMOTED: 9,
  DEGRADED: 190,
  DEGRADED_PROMOTED: 191,
} as const;

export const ACTIONS = ['meta-data', 'validate-all', 'start', 'stop', 'monitor', 'promote', 'demote', 'notify', 'usage', 'help'] as const;
export type Action = (typeof ACTIONS)[number];

/** The default cluster file, as `georm gmd run` has it. */
export function defaultConfigPath(): string { return process.env.GEORM_CONFIG ?? '/etc/georm/georm.toml'; }

export interface AgentParams {
  gmd: string;
  config: string;
  machine: string;
  /** Pacemaker's name of the resource (for the promotion score attribute). */
  instance: string;
  /** Interval of a recurring monitor in ms; 0 = a probe. */
  interval: number;
  /** Notification details (notify action only). */
  notifyType: string;
  notifyOperation: string;
}

/** This node's name as Pacemaker knows it (`crm_node -n`), else the host name. */
export function nodeName(env: NodeJS.ProcessEnv = process.env): string {
  if (env.OCF_RESKEY_CRM_meta_on_node) return env.OCF_RESKEY_CRM_meta_on_node;
  const r = spawnSync('crm_node', ['-n'], { encoding: 'utf8', timeout: 5000 });
  const n = r.status === 0 ? r.stdout.trim() : '';
  return n || hostname();
}

export function readParams(env: NodeJS.ProcessEnv = process.env): AgentParams {
  return {
    gmd: env.OCF_RESKEY_gmd ?? '',
    config: env.OCF_RESKEY_config || defaultConfigPath(),
    machine: env.OCF_RESKEY_machine || nodeName(env),
    instance: env.OCF_RESOURCE_INSTANCE ?? env.OCF_RESKEY_gmd ?? '',
    interval: Number(env.OCF_RESKEY_CRM_meta_interval ?? 0) || 0,
    notifyType: env.OCF_RESKEY_CRM_meta_notify_type ?? '',
    notifyOperation: env.OCF_RESKEY_CRM_meta_notify_operation ?? '',
  };
}

/** One log line on stderr, in the shape ocf_log gives (`gmd(instance)[pid]: LEVEL: text`). */
export function ocfLog(level: 'info' | 'warn' | 'err' | 'debug', message: string): void {
  const who = `gmd(${process.env.OCF_RESOURCE_INSTANCE ?? process.env.OCF_RESKEY_gmd ?? '?'})[${process.pid}]`;
  process.stderr.write(`${who}: ${level.toUpperCase()}: ${message}\n`);
}

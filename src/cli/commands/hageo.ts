import type { Command } from 'commander';
import { loadConfig } from '../../config/index.js';
import { renderCib } from '../../hageo/cib.js';
import { formatStatus, gatherStatus } from '../../hageo/status.js';
import { DEFAULT_AUTHKEY, DEFAULT_COROSYNC_LOG, renderCorosyncConf } from '../../hageo/corosync-conf.js';
import { defaultConfig } from './gmd.js';

/**
 * `georm hageo …`: HAGEO, georm's extension to Pacemaker + Corosync. Each verb registers itself in
 * its own function below so that verbs of different owners stay apart (the cluster-configuration
 * verbs here; the agent's verbs may be added beside them).
 */
export function register(program: Command): void {
  const hageo = program.command('hageo').description('HAGEO: the Pacemaker + Corosync configuration and state of a georm cluster');
  registerCorosyncConf(hageo);
  registerCib(hageo);
  registerStatus(hageo);
}

/** `georm hageo corosync-conf [--config F] [--authkey P] [--logfile P]`: print corosync.conf. */
function registerCorosyncConf(hageo: Command): void {
  hageo.command('corosync-conf')
    .description('print a corosync.conf for the cluster file: one knet link per geographic network (+ heartbeat), nodes = machines')
    .option('--config <file>', 'cluster configuration file', defaultConfig())
    .option('--authkey <path>', 'the shared authkey on every node (create it with corosync-keygen, copy it)', DEFAULT_AUTHKEY)
    .option('--logfile <path>', "corosync's log file", DEFAULT_COROSYNC_LOG)
    .action(async (o: { config: string; authkey: string; logfile: string }) => {
      const cfg = await loadConfig(o.config);
      process.stdout.write(renderCorosyncConf(cfg, { authkey: o.authkey, logfile: o.logfile }));
    });
}

/** `georm hageo cib [--config F] [--no-stonith] [--dc-deadtime T] [--node-config P] [--agent A]`: print the CIB. */
function registerCib(hageo: Command): void {
  hageo.command('cib')
    .description('print the Pacemaker CIB (XML) for the GMDs of the cluster file: cib.xml before a first start, or cibadmin --replace --scope configuration --xml-file F')
    .option('--config <file>', 'cluster configuration file', defaultConfig())
    .option('--no-stonith', 'write stonith-enabled=false: ONLY for test clusters without a fence device (production keeps fencing on)')
    .option('--dc-deadtime <time>', "Pacemaker's dc-deadtime (e.g. 2s for a fast first start of a test cluster)")
    .option('--node-config <path>', "the cluster file's path on the nodes (the agent's 'config' parameter; default: --config, made absolute)")
    .option('--agent <class:provider:type>', 'use another promotable agent instead of ocf:georm:gmd (rehearsal, e.g. ocf:pacemaker:Stateful)')
    .action(async (o: { config: string; stonith: boolean; dcDeadtime?: string; nodeConfig?: string; agent?: string }) => {
      const cfg = await loadConfig(o.config);
      const opts: Parameters<typeof renderCib>[1] = { noStonith: o.stonith === false };
      if (o.dcDeadtime !== undefined) opts.dcDeadtime = o.dcDeadtime;
      if (o.nodeConfig !== undefined) opts.nodeConfig = o.nodeConfig;
      if (o.agent !== undefined) opts.agent = o.agent;
      process.stdout.write(renderCib(cfg, opts));
    });
}

/** `georm hageo status [--config F] [--json]`: nodes, links, quorum and each GMD's roles, from this node. */
function registerStatus(hageo: Command): void {
  hageo.command('status')
    .description("the cluster from this node: quorum, nodes, each link's state, each GMD's promoted/unpromoted node (exit 2: Pacemaker not running)")
    .option('--config <file>', 'cluster configuration file', defaultConfig())
    .option('--json', 'print the status as JSON')
    .action(async (o: { config: string; json?: boolean }) => {
      const cfg = await loadConfig(o.config);
      const s = await gatherStatus(cfg);
      process.stdout.write(o.json ? `${JSON.stringify(s, null, 2)}\n` : formatStatus(s));
    });
}

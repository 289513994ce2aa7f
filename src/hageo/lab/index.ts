/**
 * A real Pacemaker + Corosync cluster on one machine, for tests and demos (root only).
 *
 * Each node is node1..nodeN with its own network, mount and UTS namespaces and state directories;
 * a WAN namespace holds one bridge per link and a veth per node per link. corosync.conf and cib.xml
 * come from `georm hageo corosync-conf` / `georm hageo cib` run on a generated georm cluster file
 * (DIR/georm.toml), so the lab also exercises them. Fencing is disabled (`--no-stonith`): no fence
 * device exists between namespaces; the GMD agent's resource-level fencing is what keeps data safe
 * here (DESIGN.md §9 rule 14). cib.xml is written before the first start with dc-deadtime=2s, so a
 * cluster is up in ~7 s instead of ~24 s.
 *
 * API (everything async; node names are 'node1', 'node2', …; links are 0-based knet link numbers):
 *   const lab = await Lab.up({ nodes: 2, links: 2, heartbeat: false, token: 2000,
 *                              gmds: [{ name: 'labgmd', minor: 10, mode: 'mwc' }],
 *                              agent: 'ocf:pacemaker:Stateful',     // or 'ocf:georm:gmd'
 *                              binds: [{ source, target }],         // extra bind mounts in every node
 *                              env: { K: 'v' },                     // extra environment of the daemons
 *                              dir, keepDir, persistent, waitOnline });
 *   t.teardown(() => lab.down());      // always: kills by pid, unmounts, deletes namespaces
 *   lab.dir, lab.configPath (georm.toml), lab.nodes (names), lab.cfg (the parsed cluster file),
 *   lab.cloneId(gmd)                   // Pacemaker id of a GMD's promotable clone
 *   await lab.exec('node1', 'crm_resource', ['--list'])   // { code, stdout, stderr }, inside the node
 *   await lab.crmMon('node1')          // CrmStatus: { quorum, dc, nodes[{name, online, …}], resources[{id, clone, role, node, …}] }
 *   await lab.promotedNodes('node1', clone)                // names, from that node's view
 *   await lab.linkStatus('node1')      // [{ link, addr, peers: Map<nodeid, 'connected'|'disconnected'|'localhost'> }]
 *   await lab.waitStatus('node1', (s) => …, 'what', timeoutMs)  // polls crm_mon until the predicate holds
 *   await lab.waitFor('what', async () => value | false, { timeoutMs })
 *   await lab.cutLink('node2', 0) / lab.restoreLink('node2', 0)
 *   await lab.isolate('node2') / lab.heal('node2')         // every link of the node
 *   await lab.killNode('node1')        // SIGKILL every process in the node's namespaces (site failure)
 *   await lab.stopNode('node1')        // graceful: SIGTERM pacemakerd, then corosync
 *   await lab.startNode('node1')       // after kill/stop: fresh /run and /dev/shm, corosync then pacemakerd
 *   await lab.restartNode('node1')     // killNode + startNode
 *   await lab.down() → problems[]      // [] when everything went; idempotent
 *   lab.leftovers() → string[]         // processes, namespaces, mounts of this lab still present
 *   cleanStaleLabs()                   // labs of dead owners (up() calls it first)
 * Logs: DIR/nodes/<node>/{corosync.out,pacemakerd.out,var-log/pacemaker/pacemaker.log,var-log/corosync/corosync.log};
 * GEORM_LAB_KEEP=1 keeps DIR after down() (the namespaces and processes still go).
 */
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync, chmodSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseConfig, renderConfig, type ClusterConfig } from '../../config/index.js';
import { GeormError } from '../../util/errors.js';
import { cloneId } from '../cib.js';
import { parseCfgtoolStatus, type KnetLinkStatus } from '../cfgtool.js';
import { parseCrmMon, nodesWithRole, type CrmStatus } from '../crm-mon.js';
import { labClusterFile, nodeDir, geoAddress, heartbeatAddress, type LabGmd } from './cluster-file.js';
import { must, run, waitFor, type RunResult } from './exec.js';
import { createWan, connectNode, setLink } from './network.js';
import {
  createNodeNamespaces, daemonEnv, NODE_BINDS, nodeExec, prepareNodeDirs, resetVolatile, spawnDaemon, writeNodeCib, type ExtraBind,
} from './node.js';
import { nsInode, pidStartTime, pidsInNamespaces } from './procs.js';
import {
  cleanStaleLabs, destroyLab, LAB_PREFIX, LAB_ROOT, saveState, stopNodeProcesses, type LabNodeState, type LabState,
} from './registry.js';

export { cleanStaleLabs } from './registry.js';
export type { CrmStatus } from '../crm-mon.js';
export type { LabGmd } from './cluster-file.js';

export interface LabOptions {
  nodes?: number;
  links?: number;
  heartbeat?: boolean;
  token?: number;
  fenceTimeout?: number;
  gmds?: LabGmd[];
  agent?: string;
  binds?: ExtraBind[];
  env?: Record<string, string>;
  /** State directory, seen at the same path in every node (default: a new /var/tmp/georm-lab-XXXXXX,
   *  removed by down() unless keepDir or $GEORM_LAB_KEEP=1, e.g. to read a failed test's logs).
   *  Not under /tmp, /run, /var/log, …: the nodes mount their own there. */
  dir?: string;
  keepDir?: boolean;
  /** The lab outlives this process (scripts/cluster/lab.js up); the stale cleaner leaves it alone. */
  persistent?: boolean;
  /** Wait until every node is online (default true). */
  waitOnline?: boolean;
}

/** bin/georm.js of this checkout (this file runs from dist/src/hageo/lab/). */
const GEORM_BIN = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', '..', 'bin', 'georm.js');

export class Lab {
  private downDone: Promise<string[]> | undefined;

  private constructor(
    readonly state: LabState,
    readonly cfg: ClusterConfig,
    readonly configPath: string,
    private readonly ownDir: boolean,
    private readonly keepDir: boolean,
    private readonly env: Record<string, string>,
  ) {}

  get dir(): string { return this.state.dir; }
  get nodes(): string[] { return this.state.nodes.map((n) => n.name); }
  cloneId(gmd: string): string { return cloneId(gmd); }

  static async up(o: LabOptions = {}): Promise<Lab> {
    if (process.getuid?.() !== 0) throw new GeormError('LAB_ERR_ROOT', 'the cluster lab needs root (network and mount namespaces)');
    const nodes = o.nodes ?? 2;
    const links = o.links ?? 2;
    if (nodes < 2 || nodes > 8) throw new GeormError('LAB_ERR_USAGE', 'a lab has 2–8 nodes');
    if (links < 1 || links + (o.heartbeat ? 1 : 0) > 8) throw new GeormError('LAB_ERR_USAGE', 'a lab has 1–8 links in all');

    // The nodes see the lab directory at the same path (the cluster file, the volumes): it must not
    // be under a path each node replaces with its own directory (/tmp, /run, …). /var/tmp is not.
    const shadowed = NODE_BINDS.map(([, target]) => target).find((t) => o.dir !== undefined && (resolve(o.dir) === t || resolve(o.dir).startsWith(`${t}/`)));
    if (shadowed) throw new GeormError('LAB_ERR_USAGE', `the lab directory must not be under ${shadowed}: every node mounts its own ${shadowed} and would not see it (use e.g. /var/tmp)`);
    await cleanStaleLabs();
    const ownDir = o.dir === undefined;
    const dir = resolve(o.dir ?? mkdtempSync('/var/tmp/georm-lab-'));
    mkdirSync(dir, { recursive: true });
    const id = randomBytes(3).toString('hex');
    const prefix = `${LAB_PREFIX}${id}`;
    const pinsDir = join(LAB_ROOT, id);
    const state: LabState = {
      id, dir, pinsDir,
      owner: o.persistent ? null : { pid: process.pid, start: pidStartTime(process.pid) ?? '' },
      wanNs: `${prefix}-wan`, wanInode: 0, links: links + (o.heartbeat ? 1 : 0),
      nodes: Array.from({ length: nodes }, (_, i) => {
        const name = `node${i + 1}`;
        return { name, index: i + 1, netns: `${prefix}-${name}`, mntPin: join(pinsDir, `${name}.mnt`), utsPin: join(pinsDir, `${name}.uts`),
          inodes: { net: 0, mnt: 0, uts: 0 }, pids: {} };
      }),
    };
    const env = o.env ?? {};
    let lab: Lab | undefined;
    try {
      // The pins directory must be a private mount for namespace files to be bind-mounted in it.
      mkdirSync(pinsDir, { recursive: true });
      await must('mount', ['--bind', pinsDir, pinsDir]);
      await must('mount', ['--make-private', pinsDir]);
      saveState(state);

      // The georm cluster file, and the cluster configuration rendered from it by georm itself.
      const configPath = join(dir, 'georm.toml');
      const input = labClusterFile({ dir, nodes, links, heartbeat: !!o.heartbeat, token: o.token ?? 2000,
        ...(o.fenceTimeout !== undefined ? { fenceTimeout: o.fenceTimeout } : {}),
        gmds: o.gmds ?? [{ name: 'labgmd', minor: 10, mode: 'mwc' }] });
      writeFileSync(configPath, renderConfig(input));
      writeFileSync(join(dir, 'cluster.key'), `${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
      const cfg = parseConfig(readFileSync(configPath, 'utf8'), configPath);
      writeFileSync(join(dir, 'authkey'), randomBytes(256), { mode: 0o400 });
      const georm = async (...args: string[]) => (await must(process.execPath, [GEORM_BIN, 'hageo', ...args, '--config', configPath], { env: daemonEnv() })).stdout;
      const corosyncConf = await georm('corosync-conf', '--authkey', '/etc/corosync/authkey');
      const cib = await georm('cib', '--no-stonith', '--dc-deadtime', '2s', '--agent', o.agent ?? 'ocf:pacemaker:Stateful');
      writeFileSync(join(dir, 'corosync.conf'), corosyncConf);
      writeFileSync(join(dir, 'cib.xml'), cib);
      lab = new Lab(state, cfg, configPath, ownDir, o.keepDir ?? process.env.GEORM_LAB_KEEP === '1', env);

      await createWan(state.wanNs, state.links);
      state.wanInode = nsInode(`/run/netns/${state.wanNs}`) ?? 0;
      saveState(state);
      for (const n of state.nodes) {
        const sd = nodeDir(dir, n.name);
        prepareNodeDirs(sd);
        writeFileSync(join(sd, 'etc-corosync', 'corosync.conf'), corosyncConf);
        writeFileSync(join(sd, 'etc-corosync', 'authkey'), readFileSync(join(dir, 'authkey')));
        chmodSync(join(sd, 'etc-corosync', 'authkey'), 0o400);
        writeNodeCib(sd, cib);
        await createNodeNamespaces(n, sd, o.binds ?? []);
        saveState(state);
        const addrs = Array.from({ length: links }, (_, l) => geoAddress(l + 1, n.index));
        if (o.heartbeat) addrs.push(heartbeatAddress(n.index));
        await connectNode(state.wanNs, n.netns, n.index, addrs);
      }
      await Promise.all(state.nodes.map((n) => lab!.startDaemons(n)));
      if (o.waitOnline !== false) await lab.waitAllOnline();
      return lab;
    } catch (e) {
      if (lab) await lab.down();
      else await destroyLab(state, { graceful: false }).then(() => { if (ownDir) rmSync(dir, { recursive: true, force: true }); });
      throw e;
    }
  }

  private node(name: string): LabNodeState {
    const n = this.state.nodes.find((x) => x.name === name);
    if (!n) throw new GeormError('LAB_ERR_USAGE', `no node '${name}' in this lab (nodes: ${this.nodes.join(', ')})`);
    return n;
  }

  /** corosync, wait until its quorum service answers, then pacemakerd. */
  private async startDaemons(n: LabNodeState): Promise<void> {
    const sd = nodeDir(this.dir, n.name);
    const env = daemonEnv(this.env);
    n.pids.corosync = spawnDaemon(n, join(sd, 'corosync.out'), 'corosync', ['-f'], env);
    saveState(this.state);
    await waitFor(`corosync on ${n.name}`, async () => {
      const r = await nodeExec(n, 'corosync-cmapctl', ['-g', 'runtime.votequorum.this_node_id'], { timeoutMs: 5000 });
      return r.code === 0;
    }, { timeoutMs: 30000, intervalMs: 200 });
    n.pids.pacemakerd = spawnDaemon(n, join(sd, 'pacemakerd.out'), 'pacemakerd', [], env);
    saveState(this.state);
  }

  exec(node: string, cmd: string, args: readonly string[] = [], opts: { env?: NodeJS.ProcessEnv; input?: string; timeoutMs?: number } = {}): Promise<RunResult> {
    return nodeExec(this.node(node), cmd, args, { env: opts.env ?? daemonEnv(this.env), ...(opts.input !== undefined ? { input: opts.input } : {}), ...(opts.timeoutMs !== undefined ? { timeoutMs: opts.timeoutMs } : {}) });
  }

  /** crm_mon's view from `node` (throws when crm_mon fails, e.g. Pacemaker not up there yet). */
  async crmMon(node: string): Promise<CrmStatus> {
    const r = await this.exec(node, 'crm_mon', ['--output-as=xml'], { timeoutMs: 15000 });
    if (r.code !== 0) throw new GeormError('LAB_ERR_COMMAND', `crm_mon on ${node}: exit ${r.code}: ${r.stderr.trim()}`);
    return parseCrmMon(r.stdout);
  }

  /** corosync-cfgtool -s from `view`: per knet link, each node id's state as `view` sees it. */
  async linkStatus(view: string): Promise<KnetLinkStatus[]> {
    const r = await this.exec(view, 'corosync-cfgtool', ['-s'], { timeoutMs: 15000 });
    if (r.code !== 0) throw new GeormError('LAB_ERR_COMMAND', `corosync-cfgtool -s on ${view}: exit ${r.code}: ${r.stderr.trim()}`);
    return parseCfgtoolStatus(r.stdout).links;
  }

  async promotedNodes(view: string, clone: string): Promise<string[]> {
    return nodesWithRole(await this.crmMon(view), clone, 'Promoted');
  }

  waitFor<T>(what: string, check: () => Promise<T | undefined | null | false>, opts: { timeoutMs?: number; intervalMs?: number } = {}): Promise<T> {
    return waitFor(what, check, opts);
  }

  /** Polls crm_mon on `view` until `pred` holds; resolves with that status. */
  waitStatus(view: string, pred: (s: CrmStatus) => boolean, what: string, timeoutMs = 60000): Promise<CrmStatus> {
    return waitFor(`${what} (seen from ${view})`, async () => {
      const s = await this.crmMon(view);
      return pred(s) ? s : false;
    }, { timeoutMs, intervalMs: 300 });
  }

  /** Every node, seen from every running node, online. */
  async waitAllOnline(timeoutMs = 90000): Promise<void> {
    await Promise.all(this.nodes.map((v) => this.waitStatus(v, (s) => s.nodes.length === this.nodes.length && s.nodes.every((x) => x.online), 'all nodes online', timeoutMs)));
  }

  async cutLink(node: string, link: number): Promise<void> { await setLink(this.state.wanNs, this.node(node).index, this.checkLink(link), false); }
  async restoreLink(node: string, link: number): Promise<void> { await setLink(this.state.wanNs, this.node(node).index, this.checkLink(link), true); }
  async isolate(node: string): Promise<void> { for (let l = 0; l < this.state.links; l++) await this.cutLink(node, l); }
  async heal(node: string): Promise<void> { for (let l = 0; l < this.state.links; l++) await this.restoreLink(node, l); }

  private checkLink(link: number): number {
    if (!Number.isInteger(link) || link < 0 || link >= this.state.links) throw new GeormError('LAB_ERR_USAGE', `no link ${link} (links 0–${this.state.links - 1})`);
    return link;
  }

  /** SIGKILL every process in the node's namespaces: the site is gone, nothing is stopped cleanly. */
  async killNode(node: string): Promise<void> {
    const n = this.node(node);
    if (!await stopNodeProcesses(n, false)) throw new GeormError('LAB_ERR_KILL', `processes survive SIGKILL in ${node}`);
  }

  /** A clean shutdown of the node's cluster stack (pacemakerd stops its resources first). */
  async stopNode(node: string): Promise<void> {
    const n = this.node(node);
    if (!await stopNodeProcesses(n, true)) throw new GeormError('LAB_ERR_KILL', `processes survive in ${node}`);
  }

  /** Starts a stopped or killed node again, with its CIB and logs kept, as after a reboot. */
  async startNode(node: string): Promise<void> {
    const n = this.node(node);
    if (pidsInNamespaces('net', [n.inodes.net]).length) throw new GeormError('LAB_ERR_USAGE', `${node} still runs processes; kill or stop it first`);
    await resetVolatile(n, nodeDir(this.dir, node));
    await this.startDaemons(n);
  }

  async restartNode(node: string): Promise<void> {
    await this.killNode(node);
    await this.startNode(node);
  }

  /** Takes everything down (idempotent); resolves with the problems met, [] when all went. */
  down(): Promise<string[]> {
    this.downDone ??= (async () => {
      const problems = await destroyLab(this.state, { graceful: true });
      problems.push(...this.leftovers());
      if (this.ownDir && !this.keepDir && problems.length === 0) rmSync(this.dir, { recursive: true, force: true });
      else if (existsSync(this.dir)) writeFileSync(join(this.dir, 'lab.json'), `${JSON.stringify({ ...this.state, down: true }, null, 2)}\n`);
      return problems;
    })();
    return this.downDone;
  }

  /** What of this lab still exists: processes in its namespaces, its network namespaces, its mounts. */
  leftovers(): string[] {
    const s = this.state;
    const out: string[] = [];
    const nets = [s.wanInode, ...s.nodes.map((n) => n.inodes.net)].filter(Boolean);
    const pids = new Set([...pidsInNamespaces('net', nets), ...pidsInNamespaces('mnt', s.nodes.map((n) => n.inodes.mnt).filter(Boolean)),
      ...pidsInNamespaces('uts', s.nodes.map((n) => n.inodes.uts).filter(Boolean))]);
    if (pids.size) out.push(`processes: ${[...pids].join(' ')}`);
    const ns = existsSync('/run/netns') ? readdirSync('/run/netns').filter((x) => x.startsWith(`${LAB_PREFIX}${s.id}-`)) : [];
    if (ns.length) out.push(`network namespaces: ${ns.join(' ')}`);
    const mounts = readFileSync('/proc/self/mountinfo', 'utf8').split('\n')
      .filter((l) => l.includes(` ${s.pinsDir}`) || l.includes(` ${join(s.dir, 'nodes')}`));
    if (mounts.length) out.push(`mounts: ${mounts.join(' | ')}`);
    return out;
  }
}

/** Runs a quick check that this host can run a lab; returns the reason it cannot, or false. */
export async function labUnavailable(): Promise<string | false> {
  if (process.getuid?.() !== 0) return 'needs root (network and mount namespaces)';
  for (const tool of ['corosync', 'pacemakerd', 'crm_mon', 'corosync-cmapctl', 'ip', 'nsenter', 'unshare']) {
    const r = await run('sh', ['-c', `command -v ${tool}`]);
    if (r.code !== 0) return `missing ${tool} (scripts/install-deps.sh installs the cluster packages as root)`;
  }
  return false;
}

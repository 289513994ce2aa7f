/**
 * Command-line wrapper of the cluster lab (src/hageo/lab): a real Pacemaker + Corosync cluster in
 * namespaces on this machine (root).
 *   (D must not be under /tmp, /run or /var/log: each node mounts its own there; /var/tmp/… is fine)
 *   node dist/scripts/cluster/lab.js up --nodes 2 --dir D [--links 2] [--heartbeat] [--token MS] [--agent ocf:P:T]
 *       starts it and leaves it running; prints one JSON line (dir, config, nodes, namespaces)
 *   node dist/scripts/cluster/lab.js status --dir D     crm_mon's view from each node, as JSON
 *   node dist/scripts/cluster/lab.js exec --dir D NODE CMD [ARGS…]   a command inside a node
 *   node dist/scripts/cluster/lab.js down --dir D       stops and removes it (by pid, namespaces, mounts)
 *   node dist/scripts/cluster/lab.js clean [--all]      removes leftovers of dead labs (--all: every lab)
 */
import { join } from 'node:path';
import { Lab, cleanStaleLabs } from '../../src/hageo/lab/index.js';
import { parseCrmMon } from '../../src/hageo/crm-mon.js';
import { nodeExec } from '../../src/hageo/lab/node.js';
import { destroyLab, readState } from '../../src/hageo/lab/registry.js';

function flag(args: string[], name: string): string | undefined {
  const i = args.indexOf(name);
  if (i < 0) return undefined;
  const v = args[i + 1];
  args.splice(i, 2);
  return v;
}
function bool(args: string[], name: string): boolean {
  const i = args.indexOf(name);
  if (i < 0) return false;
  args.splice(i, 1);
  return true;
}

async function main(argv: string[]): Promise<number> {
  const args = [...argv];
  const verb = args.shift();
  const dir = flag(args, '--dir');
  if (verb === 'up') {
    if (!dir) throw new Error('up needs --dir D');
    const o: Parameters<typeof Lab.up>[0] = { dir, persistent: true, keepDir: true, heartbeat: bool(args, '--heartbeat') };
    const nodes = flag(args, '--nodes'); if (nodes) o.nodes = Number(nodes);
    const links = flag(args, '--links'); if (links) o.links = Number(links);
    const token = flag(args, '--token'); if (token) o.token = Number(token);
    const agent = flag(args, '--agent'); if (agent) o.agent = agent;
    const lab = await Lab.up(o);
    process.stdout.write(`${JSON.stringify({ dir: lab.dir, config: lab.configPath, nodes: lab.nodes,
      namespaces: lab.state.nodes.map((n) => n.netns), wan: lab.state.wanNs })}\n`);
    return 0;
  }
  if (verb === 'down' || verb === 'status' || verb === 'exec') {
    if (!dir) throw new Error(`${verb} needs --dir D`);
    const state = readState(join(dir, 'lab.json'));
    if (verb === 'down') {
      const problems = await destroyLab(state, { graceful: true });
      for (const p of problems) process.stderr.write(`lab: ${p}\n`);
      return problems.length ? 1 : 0;
    }
    if (verb === 'exec') {
      const [node, cmd, ...rest] = args;
      const n = state.nodes.find((x) => x.name === node);
      if (!n || !cmd) throw new Error(`exec --dir D NODE CMD [ARGS…] (nodes: ${state.nodes.map((x) => x.name).join(', ')})`);
      const r = await nodeExec(n, cmd, rest);
      process.stdout.write(r.stdout);
      process.stderr.write(r.stderr);
      return r.code ?? 1;
    }
    const out: Record<string, unknown> = {};
    for (const n of state.nodes) {
      const r = await nodeExec(n, 'crm_mon', ['--output-as=xml'], { timeoutMs: 15000 });
      out[n.name] = r.code === 0 ? parseCrmMon(r.stdout) : { error: r.stderr.trim() };
    }
    process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
    return 0;
  }
  if (verb === 'clean') {
    for (const r of await cleanStaleLabs({ all: bool(args, '--all') })) process.stdout.write(`removed ${r}\n`);
    return 0;
  }
  process.stderr.write('usage: lab.js up|down|status|exec|clean (see the comment at the top of scripts/cluster/lab.ts)\n');
  return 1;
}

main(process.argv.slice(2)).then((code) => { process.exitCode = code; }, (e: unknown) => {
  process.stderr.write(`lab: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exitCode = 1;
});

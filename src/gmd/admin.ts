import { writeFile, readFile } from 'node:fs/promises';
import { loadConfig, findMachine, type ClusterConfig } from './cluster-config.js';
import { GeormError } from '../util/errors.js';
import { callControl } from './control.js';
import type { GmdStats, GmdStatus } from './device/index.js';
import { formatGmdstat, formatStatus, type StatSample } from './format.js';
import { controlSocketPath, defaultMachine } from './runner.js';

/** How an admin command finds the GMD processes: the cluster file and this machine's name. */
export interface AdminTarget { config: string; machine?: string; json: boolean }

interface Ctx { cfg: ClusterConfig; machine: string; json: boolean }

async function ctx(t: AdminTarget): Promise<Ctx> {
  const cfg = await loadConfig(t.config);
  const machine = defaultMachine(t.machine);
  findMachine(cfg, machine);
  return { cfg, machine, json: t.json };
}

/** GMDs defined for this machine. */
function localGmds(c: Ctx): string[] {
  return c.cfg.gmds.filter((g) => g.machines.some((m) => m.machine === c.machine)).map((g) => g.name);
}

function call(c: Ctx, gmd: string, op: string, args: Record<string, unknown> = {}, timeoutMs?: number): Promise<unknown> {
  if (!c.cfg.gmds.some((g) => g.name === gmd)) throw new GeormError('GMD_ERR_UNKNOWN', `no GMD named '${gmd}' in ${c.cfg.source}`);
  return callControl(controlSocketPath(c.cfg, gmd, c.machine), op, args, timeoutMs);
}

const out = (s: string) => process.stdout.write(s.endsWith('\n') ? s : `${s}\n`);

/** Seed-like state map display: one column per machine, runs of identical rows shown as '*'. */
export function formatStateMaps(gmd: string, status: string, pointOfView: string, maps: Array<[string, Uint8Array | null]>): string {
  const lines = [`Point of View: Node ${pointOfView}`, '', `Name: ${gmd}   Status: ${status}`, '', 'State Map:', ''];
  lines.push(['Cell'.padEnd(10), ...maps.map(([m]) => m.padEnd(10))].join(''));
  lines.push(['------'.padEnd(10), ...maps.map(() => '-----'.padEnd(10))].join(''));
  const n = Math.max(0, ...maps.map(([, c]) => c?.length ?? 0));
  let prev = '';
  let starred = false;
  for (let i = 0; i < n; i++) {
    const vals = maps.map(([, c]) => (c ? `0x${(c[i] ?? 0).toString(16)}` : '?').padEnd(10)).join('');
    if (vals === prev && i !== n - 1) {
      if (!starred) { lines.push('*'); starred = true; }
      continue;
    }
    lines.push(`${String(i).padEnd(10)}${vals}`);
    prev = vals; starred = false;
  }
  return lines.join('\n');
}

const dirtyCells = (c: Uint8Array | null) => !!c && c.some((v) => v !== 0);

export const gmdAdmin = {
  async status(t: AdminTarget, name?: string): Promise<void> {
    const c = await ctx(t);
    const names = name ? [name] : localGmds(c);
    const results: Array<GmdStatus | { name: string; state: 'NOT RUNNING'; error: string }> = [];
    for (const n of names) {
      try { results.push(await call(c, n, 'status') as GmdStatus); } catch (e) {
        if (e instanceof GeormError && e.code === 'GMD_ERR_NOT_RUNNING') results.push({ name: n, state: 'NOT RUNNING', error: e.message });
        else throw e;
      }
    }
    if (c.json) { out(JSON.stringify(name ? results[0] : results)); return; }
    out(results.map((r) => 'error' in r ? `${r.name} state:DEFINED (no process: ${r.error})` : formatStatus(r)).join('\n\n'));
  },

  async start(t: AdminTarget, name: string, down: string[]): Promise<void> {
    const c = await ctx(t);
    const r = await call(c, name, 'start', { down }) as { message: string; peer: string | null };
    if (c.json) out(JSON.stringify(r)); else out(r.message.split('\n').map((l) => `startgmd: ${l}`).join('\n'));
  },

  async simple(t: AdminTarget, name: string, op: string, word: string): Promise<void> {
    const c = await ctx(t);
    const r = await call(c, name, op) as GmdStatus;
    if (c.json) out(JSON.stringify(r)); else out(`${name} ${op === 'dirty' || op === 'clean' ? word : r.state === 'DEFINED' ? 'Defined' : r.state === 'STOPPED' ? 'Stopped' : r.state === 'AVAILABLE' ? 'Available' : word}`);
  },

  async down(t: AdminTarget, name: string, peer: string): Promise<void> {
    const c = await ctx(t);
    const r = await call(c, name, 'down', { peer }) as { stoppedRemote: boolean };
    if (c.json) out(JSON.stringify(r));
    else out(`gmddown: ${name}: remote peer ${peer} marked down${r.stoppedRemote ? ` (its GMD was AVAILABLE and has been stopped)` : ''}`);
  },

  async showState(t: AdminTarget, name: string, o: { local: boolean; dump?: string; }): Promise<void> {
    const c = await ctx(t);
    const r = await call(c, name, 'cells', { peers: !o.local }) as { machine: string; cells: string; peerCells: Record<string, string | null>; state: string; regionSize: number };
    const maps: Array<[string, Uint8Array | null]> = [[r.machine, new Uint8Array(Buffer.from(r.cells, 'base64'))]];
    for (const [p, cells] of Object.entries(r.peerCells)) maps.push([p, cells === null ? null : new Uint8Array(Buffer.from(cells, 'base64'))]);
    const dirty = maps.some(([, m]) => dirtyCells(m));
    if (o.dump) {
      await writeFile(o.dump, JSON.stringify({ gmd: name, machine: r.machine, regionSize: r.regionSize, cells: r.cells }) + '\n');
    } else if (c.json) {
      out(JSON.stringify({ gmd: name, state: r.state, regionSize: r.regionSize, dirty,
        maps: Object.fromEntries(maps.map(([m, cells]) => [m, cells ? summarize(cells) : null])) }));
    } else out(formatStateMaps(name, r.state, c.machine, maps));
    if (dirty) process.exitCode = 2;
  },

  /** `gmd_show_state -M FILE -m`: a dumped map file made readable. */
  async showDump(file: string, json: boolean): Promise<void> {
    const d = JSON.parse(await readFile(file, 'utf8')) as { gmd: string; machine: string; cells: string };
    const cells = new Uint8Array(Buffer.from(d.cells, 'base64'));
    if (json) out(JSON.stringify({ ...d, ...summarize(cells) }));
    else out(formatStateMaps(d.gmd, 'dump', d.machine, [[d.machine, cells]]));
    if (dirtyCells(cells)) process.exitCode = 2;
  },

  async unify(t: AdminTarget, name: string, master: string, preview: boolean): Promise<void> {
    const c = await ctx(t);
    const r = await call(c, name, 'unify', { master, preview }) as { unified: string; cleared: string | null };
    const unified = new Uint8Array(Buffer.from(r.unified, 'base64'));
    if (c.json) out(JSON.stringify({ master, preview, cleared: r.cleared, unified: summarize(unified) }));
    else if (preview) out(formatStateMaps(name, 'unify preview', master, [[`${master}(unified)`, unified]]));
    else out(`Clearing ${name}'s state map on ${r.cleared}.`);
    if (preview && dirtyCells(unified)) process.exitCode = 2;
  },

  async takeover(t: AdminTarget, name: string, map: string): Promise<void> {
    const c = await ctx(t);
    const r = await call(c, name, 'takeover', { map }) as GmdStatus;
    if (c.json) out(JSON.stringify(r)); else out(`${name}: merged ${map} into this machine's state map and cleaned it`);
  },

  async verify(t: AdminTarget, name?: string): Promise<void> {
    const c = await ctx(t);
    const names = name ? [name] : localGmds(c);
    let errors = 0;
    const all: Array<{ gmd: string; text: string; errors: number; findings: unknown[] }> = [];
    for (const n of names) {
      const r = await call(c, n, 'verify', {}, 30000) as { text: string; errors: number; findings: unknown[] };
      errors += r.errors;
      all.push({ gmd: n, ...r });
    }
    if (c.json) out(JSON.stringify({ errors, gmds: all.map((a) => ({ gmd: a.gmd, errors: a.errors, findings: a.findings })) }));
    else out(all.map((a) => `Verifying ${a.gmd} from ${c.machine} (and its peers through GeoMessage)\n${a.text}`).join('\n'));
    if (errors) process.exitCode = 1;
  },

  async stat(t: AdminTarget, names: string[] | null, o: { summary: boolean; interval: number; count: number }): Promise<void> {
    let c: Ctx;
    try { c = await ctx(t); } catch (e) { throw asStatError(e); }
    const list = names ?? localGmds(c);
    const take = async () => Promise.all(list.map(async (n) => {
      try { return { name: n, ...(await call(c, n, 'stat') as { stats: GmdStats; peer: string | null; time: number }) }; } catch (e) { throw asStatError(e); }
    }));
    let before = await take();
    for (let i = 0; i < Math.max(1, o.count); i++) {
      if (o.interval > 0 && (o.count > 1 || i > 0)) await new Promise((r) => setTimeout(r, o.interval * 1000));
      const now = o.count > 1 || i > 0 ? await take() : before;
      const samples: StatSample[] = now.map((s, k) => ({
        name: s.name, peer: s.peer, now: s.stats, before: now === before ? null : before[k]!.stats,
        seconds: now === before ? 0 : (s.time - before[k]!.time) / 1000,
      }));
      if (c.json) out(JSON.stringify(samples.map((s) => ({ gmd: s.name, peer: s.peer, stats: s.now, seconds: s.seconds }))));
      else out(formatGmdstat(samples, o.summary));
      before = now;
    }
  },
};

/** gmdstat exit codes (seed Table 11): 2 = the information is not available. */
function asStatError(e: unknown): unknown {
  if (e instanceof GeormError) return new GeormError(e.code, e.message, { exitCode: 2 });
  return e;
}

function summarize(cells: Uint8Array): { regions: number; clean: number; inconsistent: number; stale: number; dirtyRegions: number[] } {
  let clean = 0, stale = 0, inconsistent = 0;
  const dirty: number[] = [];
  for (let i = 0; i < cells.length; i++) {
    const v = cells[i]!;
    if (v === 0) clean++; else { if (v === 0xf) stale++; else inconsistent++; if (dirty.length < 10000) dirty.push(i); }
  }
  return { regions: cells.length, clean, inconsistent, stale, dirtyRegions: dirty };
}

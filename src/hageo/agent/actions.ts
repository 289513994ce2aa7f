/**
 * The actions of ocf:georm:gmd (`georm ocf <action>`, run by scripts/ocf/gmd): each returns an OCF
 * exit code, is idempotent, and returns only once its work is complete. The GMD process does the
 * work (src/gmd/promotion.ts); this file decides what to ask and what the answer means.
 */
import { existsSync } from 'node:fs';
import { loadConfig, findGmd, findMachine, gmdMachine, type ClusterConfig } from '../../gmd/cluster-config.js';
import type { HaStatus } from '../../gmd/promotion.js';
import { GeormError } from '../../util/errors.js';
import { metadataXml } from './metadata.js';
import { OCF, ocfLog, readParams, type AgentParams } from './ocf.js';
import { applyScore, scoreFor } from './scores.js';
import { readOutdated, recordOutdated, clearOutdated } from './outdated.js';
import { crm } from './crm.js';
import { answers, control, launch, livePid, processPaths, shutdown, type GmdProcessPaths } from './daemon.js';

interface Ctx { p: AgentParams; cfg: ClusterConfig; paths: GmdProcessPaths; peers: string[] }

/** Checks the parameters against the cluster file; returns the exit code to give when they are wrong. */
async function context(p: AgentParams): Promise<Ctx | { code: number; why: string }> {
  if (!p.gmd) return { code: OCF.ERR_CONFIGURED, why: 'parameter gmd is required' };
  if (!existsSync(p.config)) return { code: OCF.ERR_INSTALLED, why: `cluster file ${p.config} does not exist on this node` };
  let cfg: ClusterConfig;
  try { cfg = await loadConfig(p.config); } catch (e) { return { code: OCF.ERR_CONFIGURED, why: (e as Error).message }; }
  try {
    findMachine(cfg, p.machine);
    const g = findGmd(cfg, p.gmd);
    gmdMachine(g, p.machine);
    const peers = g.machines.map((m) => m.machine).filter((m) => m !== p.machine);
    return { p, cfg, paths: processPaths(cfg, p.gmd, p.machine), peers };
  } catch (e) { return { code: OCF.ERR_CONFIGURED, why: (e as Error).message }; }
}

async function haStatus(c: Ctx): Promise<HaStatus | null> {
  try { return await control(c.paths, 'ha-status', {}, 15000) as HaStatus; } catch (e) {
    if (e instanceof GeormError && e.code === 'GMD_ERR_NOT_RUNNING') return null;
    throw e;
  }
}

/** Whether the cluster records this node outdated (false outside a cluster, where there is no CIB). */
function recordedOutdated(c: Ctx): { outdated: boolean; value?: string } {
  try {
    const r = readOutdated(c.p.gmd, c.p.machine);
    return r ? { outdated: true, value: r.value } : { outdated: false };
  } catch (e) {
    ocfLog('debug', (e as Error).message);
    return { outdated: false };
  }
}

/** Score and outdated-record bookkeeping after any action that learned the GMD's state. */
function settle(c: Ctx, st: HaStatus | null): void {
  if (st && st.state === 'AVAILABLE' && st.peer && st.peerMapDirty === false && !st.localDirty && !st.resync?.running) {
    // In sync with the peer: neither side is outdated any more.
    for (const node of [st.peer, c.p.machine]) {
      try { if (clearOutdated(c.p.gmd, node)) ocfLog('info', `${node} is in sync again for ${c.p.gmd}: outdated record removed`); } catch (e) { ocfLog('debug', (e as Error).message); }
    }
  }
  if (st && st.promoted && st.state === 'AVAILABLE' && !st.peer && st.localDirty) {
    // Writing without the peer: the peers must be recorded outdated (the GMD's own fence hook does
    // this before acknowledging; this is the agent's check that the record is there).
    for (const peer of c.peers) {
      try { if (!readOutdated(c.p.gmd, peer)) { recordOutdated(c.p.gmd, peer, c.p.machine); ocfLog('warn', `${peer} recorded outdated for ${c.p.gmd}`); } } catch (e) { ocfLog('warn', (e as Error).message); }
    }
  }
  applyScore(scoreFor(st, recordedOutdated(c).outdated));
}

/** Peers the cluster no longer counts in this partition (crm_node -p); none when it cannot tell (no cluster). */
function peersGone(c: Ctx): string[] {
  const r = crm('crm_node', ['-p']);
  if (r.code !== 0) return [];
  const members = new Set(r.stdout.trim().split(/\s+/).filter(Boolean));
  if (!members.has(c.p.machine)) return [];
  return c.peers.filter((p) => !members.has(p));
}

/**
 * When the cluster says the GMD's active peer has left this partition, the GMD stops mirroring to
 * it now (gmddown) instead of waiting for GeoMessage to give up on it: its writes are then marked
 * stale, and the fence gate records that peer outdated (with quorum) before acknowledging them.
 */
async function dropGonePeers(c: Ctx, st: HaStatus | null): Promise<HaStatus | null> {
  if (!st || !st.peer || !peersGone(c).includes(st.peer)) return st;
  ocfLog('warn', `${st.peer} is not a member of this partition: ${c.p.gmd} stops mirroring to it (gmddown)`);
  await control(c.paths, 'down', { peer: st.peer }, 15000).catch((e: unknown) => ocfLog('warn', `gmddown ${st.peer}: ${(e as Error).message}`));
  return haStatus(c);
}

function healthy(st: HaStatus): boolean {
  return !!st.peer && st.peerMapDirty === false && !st.localDirty && !st.resync?.running;
}

async function start(c: Ctx): Promise<number> {
  if (!livePid(c.paths) && !(await answers(c.paths))) await launch(c.paths, c.p.gmd, c.p.config, c.p.machine);
  const st0 = await haStatus(c);
  if (st0?.state !== 'AVAILABLE') await control(c.paths, 'start', {}, 200_000);
  const st = await haStatus(c);
  if (!st || st.state !== 'AVAILABLE') { ocfLog('err', `${c.p.gmd} did not become AVAILABLE (state ${st?.state ?? 'no process'})`); return OCF.ERR_GENERIC; }
  ocfLog('info', `${c.p.gmd} started unpromoted on ${c.p.machine} (${st.peer ? `mirroring with ${st.peer}` : 'no peer'})`);
  settle(c, st);
  return OCF.SUCCESS;
}

async function stop(c: Ctx): Promise<number> {
  applyScore(null);
  if (!livePid(c.paths) && !(await answers(c.paths))) return OCF.SUCCESS;
  await control(c.paths, 'stop', {}, 90_000).catch((e: unknown) => ocfLog('warn', `stop: ${(e as Error).message}`));
  await shutdown(c.paths);
  if (await answers(c.paths).catch(() => true)) { ocfLog('err', `${c.p.gmd}: the GMD process still answers after shutdown`); return OCF.ERR_GENERIC; }
  ocfLog('info', `${c.p.gmd} stopped on ${c.p.machine}`);
  return OCF.SUCCESS;
}

async function monitor(c: Ctx): Promise<number> {
  const st = await dropGonePeers(c, await haStatus(c));
  if (!st) {
    if (livePid(c.paths)) { ocfLog('err', `${c.p.gmd}: the GMD process runs but does not answer`); return OCF.ERR_GENERIC; }
    return OCF.NOT_RUNNING;
  }
  settle(c, st);
  if (st.state !== 'AVAILABLE') {
    if (st.promoted) return OCF.FAILED_PROMOTED;
    // The process runs but the GMD was stopped under us (gmddown from the peer, an error): a failure.
    ocfLog('err', `${c.p.gmd} is ${st.state} on ${c.p.machine}: ${JSON.stringify(st)}`);
    return OCF.ERR_GENERIC;
  }
  if (st.promoted) return healthy(st) ? OCF.RUNNING_PROMOTED : OCF.DEGRADED_PROMOTED;
  return healthy(st) ? OCF.SUCCESS : OCF.DEGRADED;
}

async function promote(c: Ctx): Promise<number> {
  const st0 = await dropGonePeers(c, await haStatus(c));
  if (!st0 || st0.state !== 'AVAILABLE') { ocfLog('err', `promote: ${c.p.gmd} is not running here (start it first)`); return st0 ? OCF.ERR_GENERIC : OCF.NOT_RUNNING; }
  if (st0.promoted && st0.exposed) { settle(c, st0); return OCF.SUCCESS; }
  const rec = recordedOutdated(c);
  if (rec.outdated) {
    ocfLog('err', `refusing to promote ${c.p.gmd} on ${c.p.machine}: the cluster records this copy outdated (${rec.value}). ` +
      `The other site acknowledged writes this copy does not have. To promote it anyway, losing those writes ` +
      `(the other site's copy diverges and needs 'georm unify' when it returns): georm hageo unfence-peer --gmd ${c.p.gmd} --peer ${c.p.machine} --force`);
    applyScore(0);
    return OCF.ERR_GENERIC;
  }
  try {
    await control(c.paths, 'promote', {}, 85_000);
  } catch (e) {
    ocfLog('err', `promote ${c.p.gmd} on ${c.p.machine}: ${(e as Error).message}`);
    settle(c, await haStatus(c).catch(() => null));
    return OCF.ERR_GENERIC;
  }
  const st = await haStatus(c);
  settle(c, st);
  ocfLog('info', `${c.p.gmd} promoted on ${c.p.machine} (nbd: ${st?.nbdUris.join(', ') || 'none'})`);
  return st?.promoted ? OCF.SUCCESS : OCF.ERR_GENERIC;
}

async function demote(c: Ctx): Promise<number> {
  const st0 = await haStatus(c);
  if (!st0) return OCF.NOT_RUNNING;
  if (!st0.promoted) { settle(c, st0); return OCF.SUCCESS; }
  try {
    await control(c.paths, 'demote', {}, 85_000);
  } catch (e) {
    ocfLog('err', `demote ${c.p.gmd} on ${c.p.machine}: ${(e as Error).message}`);
    return OCF.ERR_GENERIC;
  }
  const st = await haStatus(c);
  settle(c, st);
  ocfLog('info', `${c.p.gmd} demoted on ${c.p.machine}`);
  return st && !st.promoted ? OCF.SUCCESS : OCF.ERR_GENERIC;
}

async function notify(c: Ctx): Promise<number> {
  // Pre/post notifications of the clone's operations: the peer's state may have changed; the score follows.
  const st = await dropGonePeers(c, await haStatus(c).catch(() => null)).catch(() => null);
  if (st) settle(c, st);
  return OCF.SUCCESS;
}

const USAGE = 'usage: gmd {start|stop|monitor|promote|demote|notify|validate-all|meta-data}\n';

/** Runs one OCF action and returns its exit code. */
export async function runAction(action: string, env: NodeJS.ProcessEnv = process.env): Promise<number> {
  if (action === 'meta-data') { process.stdout.write(metadataXml()); return OCF.SUCCESS; }
  if (action === 'usage' || action === 'help') { process.stdout.write(USAGE); return OCF.SUCCESS; }
  const handlers: Record<string, (c: Ctx) => Promise<number>> = { start, stop, monitor, promote, demote, notify, 'validate-all': async () => OCF.SUCCESS };
  const handler = handlers[action];
  if (!handler) { process.stderr.write(USAGE); return OCF.ERR_UNIMPLEMENTED; }
  const p = readParams(env);
  const c = await context(p);
  if ('code' in c) {
    // A probe or stop on a node without the cluster file (or this GMD) finds nothing running here.
    if (action === 'stop') return OCF.SUCCESS;
    if (action === 'monitor' && c.code === OCF.ERR_INSTALLED) return OCF.NOT_RUNNING;
    ocfLog('err', `${action}: ${c.why}`);
    return c.code;
  }
  try {
    return await handler(c);
  } catch (e) {
    ocfLog('err', `${action} ${p.gmd} on ${p.machine}: ${(e as Error).message}`);
    return OCF.ERR_GENERIC;
  }
}

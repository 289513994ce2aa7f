import { createHash } from 'node:crypto';
import { open, stat } from 'node:fs/promises';
import { blockDeviceSize, nativeAvailable } from '../native/index.js';
import { readStateMapFile, isMapClean, StateMapError } from '../statemap/index.js';
import { findMachine, type ClusterConfig } from './index.js';

/**
 * geo_verify (seed §6.4) in two halves so it runs across machines without rsh:
 *  - gatherFacts(cfg, machine): what this machine sees (its volumes, state maps, key file, and a
 *    digest of its configuration), as plain JSON a GMD process can send over GeoMessage;
 *  - compareFacts(cfg, facts): the checks, on the facts of every machine; formatVerify prints them
 *    ending, like the seed, with "No ERRORS:." when all is well.
 * Static checks (references, minors, roles, sites) are already enforced by parseConfig.
 */

export type VerifyLevel = 'error' | 'warning';
export interface VerifyFinding { level: VerifyLevel; machine?: string; gmd?: string; check: string; message: string }

export interface StateMapFacts {
  state: 'ok' | 'missing' | 'corrupt' | 'mismatch' | 'unreadable';
  message?: string;
  dirty?: boolean;
  /** Left open: its GMD is running, or crashed. */
  open?: boolean;
  generation?: string;
}
export interface GmdFacts {
  name: string;
  minor: number;
  mode: string;
  role: string;
  regionSize: number;
  volume: string;
  volumeKind: 'file' | 'block' | 'missing' | 'other';
  /** Bytes, or null when unknown. */
  volumeSize: number | null;
  volumeMessage?: string;
  stateMap: StateMapFacts;
}
export interface MachineFacts {
  machine: string;
  site: string;
  configDigest: string;
  keyFile: { state: 'ok' | 'missing' | 'insecure' | 'unreadable'; message?: string };
  runDir: { state: 'ok' | 'missing' | 'not-a-directory' };
  gmds: GmdFacts[];
}

/** SHA-256 of the configuration's content (not its file name): equal on machines with the same file. */
export function configDigest(cfg: ClusterConfig): string {
  const { source: _source, ...content } = cfg;
  void _source;
  return createHash('sha256').update(JSON.stringify(content)).digest('hex');
}

async function volumeFacts(path: string): Promise<Pick<GmdFacts, 'volumeKind' | 'volumeSize' | 'volumeMessage'>> {
  try {
    const st = await stat(path);
    if (st.isFile()) return { volumeKind: 'file', volumeSize: st.size };
    if (st.isBlockDevice()) {
      if (!nativeAvailable) return { volumeKind: 'block', volumeSize: null, volumeMessage: 'size unknown: the native addon is not built' };
      const fh = await open(path, 'r');
      try {
        return { volumeKind: 'block', volumeSize: blockDeviceSize(fh.fd) };
      } finally {
        await fh.close();
      }
    }
    return { volumeKind: 'other', volumeSize: null, volumeMessage: 'neither a regular file nor a block device' };
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return { volumeKind: 'missing', volumeSize: null, volumeMessage: 'does not exist' };
    return { volumeKind: 'other', volumeSize: null, volumeMessage: (e as Error).message };
  }
}

async function stateMapFacts(path: string, expect: { gmdName: string; minor: number; regionSize: number; deviceSize?: number }): Promise<StateMapFacts> {
  try {
    const snap = await readStateMapFile(path, expect);
    return { state: 'ok', dirty: !isMapClean(snap.cells), open: snap.open, generation: `0x${snap.generation.toString(16)}` };
  } catch (e) {
    if (e instanceof StateMapError) {
      const state = e.code === 'STATEMAP_ERR_NOT_FOUND' ? 'missing' : e.code === 'STATEMAP_ERR_CORRUPT' ? 'corrupt'
        : e.code === 'STATEMAP_ERR_MISMATCH' ? 'mismatch' : 'unreadable';
      return { state, message: e.message };
    }
    return { state: 'unreadable', message: (e as Error).message };
  }
}

export async function gatherFacts(cfg: ClusterConfig, machine: string): Promise<MachineFacts> {
  const m = findMachine(cfg, machine);
  let keyFile: MachineFacts['keyFile'];
  try {
    const st = await stat(cfg.cluster.keyFile);
    keyFile = (st.mode & 0o077) !== 0
      ? { state: 'insecure', message: `${cfg.cluster.keyFile} is readable by group or others (mode ${(st.mode & 0o777).toString(8)}); chmod 600 it` }
      : { state: 'ok' };
  } catch (e) {
    keyFile = (e as NodeJS.ErrnoException).code === 'ENOENT'
      ? { state: 'missing', message: `${cfg.cluster.keyFile} does not exist` }
      : { state: 'unreadable', message: (e as Error).message };
  }
  let runDir: MachineFacts['runDir'];
  try {
    runDir = (await stat(m.runDir)).isDirectory() ? { state: 'ok' } : { state: 'not-a-directory' };
  } catch {
    runDir = { state: 'missing' };
  }
  const gmds: GmdFacts[] = [];
  for (const g of cfg.gmds) {
    const gm = g.machines.find((x) => x.machine === machine);
    if (!gm) continue;
    const vol = await volumeFacts(gm.volume);
    const expect = { gmdName: g.name, minor: g.minor, regionSize: g.regionSize, ...(vol.volumeSize !== null ? { deviceSize: vol.volumeSize } : {}) };
    gmds.push({
      name: g.name, minor: g.minor, mode: g.mode, role: gm.role, regionSize: g.regionSize, volume: gm.volume, ...vol,
      stateMap: await stateMapFacts(gm.stateMap, expect),
    });
  }
  return { machine: m.name, site: m.site, configDigest: configDigest(cfg), keyFile, runDir, gmds };
}

/** The checks of seed §6.4 on the facts of the machines that answered (missing ones are reported). */
export function compareFacts(cfg: ClusterConfig, facts: MachineFacts[]): VerifyFinding[] {
  const out: VerifyFinding[] = [];
  const add = (level: VerifyLevel, check: string, message: string, where: { machine?: string; gmd?: string } = {}) =>
    out.push({ level, check, message, ...where });
  const byMachine = new Map(facts.map((f) => [f.machine, f] as const));
  const digest = configDigest(cfg);

  for (const f of facts) {
    const machine = f.machine;
    if (f.configDigest !== digest) add('error', 'config-identical', `the configuration on ${machine} differs from this one (digest ${f.configDigest.slice(0, 12)}… vs ${digest.slice(0, 12)}…); copy the same file to every machine`, { machine });
    if (f.keyFile.state !== 'ok') add('error', 'cluster-key', f.keyFile.message ?? `cluster key ${f.keyFile.state}`, { machine });
    if (f.runDir.state !== 'ok') add('warning', 'run-dir', `run_dir is ${f.runDir.state === 'missing' ? 'missing (created when a GMD starts)' : 'not a directory'}`, { machine });
    for (const g of f.gmds) {
      const where = { machine, gmd: g.name };
      if (g.volumeKind === 'missing' || g.volumeKind === 'other') add('error', 'volume', `volume ${g.volume} ${g.volumeMessage ?? 'is unusable'}`, where);
      else if (g.volumeSize === null) add('warning', 'volume', `volume ${g.volume}: ${g.volumeMessage ?? 'size unknown'}`, where);
      else if (g.volumeSize % 512 !== 0) add('error', 'volume', `volume ${g.volume} is ${g.volumeSize} bytes, not a multiple of 512`, where);
      const sm = g.stateMap;
      if (sm.state === 'missing') add('warning', 'state-map', `state map does not exist yet (created by 'georm configure')`, where);
      else if (sm.state !== 'ok') add('error', 'state-map', sm.message ?? `state map ${sm.state}`, where);
    }
  }

  for (const g of cfg.gmds) {
    const seen: Array<{ machine: string; f: GmdFacts }> = [];
    for (const gm of g.machines) {
      const f = byMachine.get(gm.machine);
      if (!f) {
        add('warning', 'reachable', `no answer from ${gm.machine}: its side of ${g.name} was not checked`, { machine: gm.machine, gmd: g.name });
        continue;
      }
      const gf = f.gmds.find((x) => x.name === g.name);
      if (!gf) add('error', 'gmd-defined', `${gm.machine} does not know GMD ${g.name}`, { machine: gm.machine, gmd: g.name });
      else seen.push({ machine: gm.machine, f: gf });
    }
    const sizes = seen.filter((s) => s.f.volumeSize !== null);
    if (sizes.length > 1 && new Set(sizes.map((s) => s.f.volumeSize)).size > 1) {
      add('error', 'same-size', `volumes of ${g.name} differ in size (${sizes.map((s) => `${s.machine}: ${s.f.volumeSize} B`).join(', ')}); a mirror needs equal sizes or data is lost`, { gmd: g.name });
    }
    for (const key of ['minor', 'mode', 'regionSize'] as const) {
      if (new Set(seen.map((s) => s.f[key])).size > 1) {
        add('error', `same-${key}`, `${key} of ${g.name} differs between machines (${seen.map((s) => `${s.machine}: ${s.f[key]}`).join(', ')})`, { gmd: g.name });
      }
    }
    const dirty = seen.filter((s) => s.f.stateMap.dirty);
    const sites = new Set(dirty.map((s) => byMachine.get(s.machine)?.site));
    if (sites.size > 1) {
      add('warning', 'divergence', `state maps of ${g.name} are dirty on ${dirty.map((s) => s.machine).join(' and ')}: data divergence; 'georm unify --master M' before starting`, { gmd: g.name });
    }
  }
  return out;
}

/** Human report: one line per finding, then the seed's last line ("No ERRORS:." when clean). */
export function formatVerify(findings: VerifyFinding[]): string {
  const lines = findings.map((f) => `${f.level.toUpperCase()}: ${f.machine ? `${f.machine}: ` : ''}${f.gmd ? `${f.gmd}: ` : ''}${f.message} [${f.check}]`);
  const errors = findings.filter((f) => f.level === 'error').length;
  const warnings = findings.length - errors;
  lines.push(errors === 0 ? `No ERRORS:.${warnings ? ` (${warnings} warnings)` : ''}` : `${errors} ERRORS:.${warnings ? ` (${warnings} warnings)` : ''}`);
  return `${lines.join('\n')}\n`;
}

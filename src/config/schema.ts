import { isIP } from 'node:net';
import { z } from 'zod';
import { parseSize } from '../util/size.js';

/**
 * The schema of the cluster file, on the TOML document as written (snake_case keys). Unknown keys
 * are errors (a typo must not silently fall back to a default). Per-field checks live here;
 * checks across sections (references, duplicates) are in validate.ts.
 */

import { MODES, ROLES } from './vocabulary.js';
export { MODES, ROLES, type Mode, type Role } from './vocabulary.js';

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
const name = (what: string) => z.string({ error: `${what} must be a string` })
  .regex(NAME_RE, { error: `${what} must be 1–64 letters, digits, '_', '.', '-' (starting with a letter or digit)` });

const size = (what: string, min: number) => z.union([z.string(), z.number()], { error: `${what} must be a size such as 512, 64K, 256M, 1G` })
  .transform((v, ctx) => {
    try {
      const n = parseSize(v, what);
      if (n < min) {
        ctx.addIssue({ code: 'custom', message: `${what} must be at least ${min} bytes` });
        return z.NEVER;
      }
      return n;
    } catch (e) {
      ctx.addIssue({ code: 'custom', message: (e as Error).message });
      return z.NEVER;
    }
  });

const port = z.number({ error: 'port must be a number' }).int({ error: 'port must be a whole number' })
  .min(1, { error: 'port must be 1–65535' }).max(65535, { error: 'port must be 1–65535' });

const HOST_RE = /^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;
const address = z.string({ error: 'address must be a string' })
  .refine((a) => isIP(a) !== 0 || HOST_RE.test(a), { error: 'address must be an IPv4/IPv6 address or a host name' });

const path = (what: string) => z.string({ error: `${what} must be a path` }).min(1, { error: `${what} must not be empty` });

const listen = z.string({ error: 'nbd_listen entries must be strings' })
  .refine((s) => /^unix:.+/.test(s) || /^tcp:\/\/(\[[0-9a-fA-F:.]+\]|[^:/\s]+):\d{1,5}$/.test(s), {
    error: "nbd_listen entries look like 'unix:/run/georm/x.nbd' or 'tcp://127.0.0.1:10809'",
  });

export const InterfaceSchema = z.strictObject({
  network: name('network'),
  address,
  port,
});

export const MachineSchema = z.strictObject({
  name: name('machine name'),
  site: name('site'),
  promote_failure_timeout: z.number({ error: 'promote_failure_timeout must be a number of seconds' })
    .int({ error: 'promote_failure_timeout must be whole seconds' }).min(0, { error: 'promote_failure_timeout must be ≥ 0 (0 = never)' })
    .max(86400, { error: 'promote_failure_timeout must be at most 86400 s' }).default(0),
  run_dir: path('run_dir').default('/run/georm'),
  interface: z.array(InterfaceSchema, { error: 'interface must be an array of tables ([[machine.interface]])' })
    .min(1, { error: 'a machine needs at least one [[machine.interface]]' }),
});

export const GmdMachineSchema = z.strictObject({
  machine: name('machine'),
  volume: path('volume'),
  state_map: path('state_map'),
  role: z.enum(ROLES, { error: `role must be one of ${ROLES.join(', ')}` }),
  nbd_listen: z.array(listen, { error: 'nbd_listen must be an array of strings' }).optional(),
  nbd_device: z.string().regex(/^\/dev\/nbd\d+$/, { error: "nbd_device must look like '/dev/nbd10'" }).optional(),
});

export const GmdSchema = z.strictObject({
  name: name('GMD name'),
  minor: z.number({ error: 'minor must be a number' }).int({ error: 'minor must be a whole number' })
    .min(0, { error: 'minor must be 0–1023' }).max(1023, { error: 'minor must be 0–1023' }),
  mode: z.enum(MODES, { error: `mode must be one of ${MODES.join(', ')}` }),
  region_size: size('region_size', 512).default(32 * 1024)
    .refine((n) => (n & (n - 1)) === 0 && n <= 2 ** 30, { error: 'region_size must be a power of two (512 B – 1 GiB)' }),
  sync_rate: size('sync_rate', 512).default(64 * 1024)
    .refine((n) => n <= 64 * 1024 * 1024, { error: 'sync_rate must be at most 64M' }),
  hwm: size('hwm', 1024).default(128 * 1024),
  resync_rate_limit: size('resync_rate_limit', 0).default(0),
  machine: z.array(GmdMachineSchema, { error: 'machine must be an array of tables ([[gmd.machine]])' })
    .min(2, { error: 'a GMD needs at least two [[gmd.machine]] entries (one per site)' }),
});

export const FENCING = ['resource-only', 'none'] as const;
export type Fencing = (typeof FENCING)[number];

/** A heartbeat-only knet link (the seed's Geo_Secondary network): one address per machine. */
export const HageoHeartbeatSchema = z.strictObject({
  machine: name('machine'),
  address,
});

/**
 * `[hageo]`: what georm needs to render the Pacemaker + Corosync configuration and what the OCF
 * agent reads at run time. Optional: a cluster file without it gets every default.
 */
export const HageoSchema = z.strictObject({
  cluster_name: name('cluster_name').default('georm'),
  fencing: z.enum(FENCING, { error: `fencing must be one of ${FENCING.join(', ')}` }).default('resource-only'),
  fence_timeout: z.number({ error: 'fence_timeout must be a number of seconds' })
    .int({ error: 'fence_timeout must be whole seconds' }).min(1, { error: 'fence_timeout must be 1–3600 s' })
    .max(3600, { error: 'fence_timeout must be 1–3600 s' }).default(30),
  token: z.number({ error: 'token must be a number of milliseconds' })
    .int({ error: 'token must be whole milliseconds' }).min(500, { error: 'token must be 500–60000 ms' })
    .max(60000, { error: 'token must be 500–60000 ms' }).default(3000),
  heartbeat: z.array(HageoHeartbeatSchema, { error: 'heartbeat must be an array of tables ([[hageo.heartbeat]])' }).default([]),
});

export const ConfigSchema = z.strictObject({
  cluster: z.strictObject({
    name: name('cluster name'),
    key_file: path('key_file').default('/etc/georm/cluster.key'),
  }, { error: 'missing [cluster] table' }),
  site: z.array(z.strictObject({ name: name('site name') }), { error: 'missing [[site]] tables (exactly two)' })
    .length(2, { error: 'exactly two [[site]] tables are needed' }),
  network: z.array(z.strictObject({
    name: name('network name'),
    mtu: z.number({ error: 'mtu must be a number' }).int().min(576, { error: 'mtu must be 576–65535' }).max(65535, { error: 'mtu must be 576–65535' }).default(1500),
  }), { error: 'missing [[network]] tables' }).min(1, { error: 'at least one [[network]] is needed' }),
  machine: z.array(MachineSchema, { error: 'missing [[machine]] tables' }).min(2, { error: 'at least two [[machine]] tables are needed' }),
  gmd: z.array(GmdSchema, { error: 'gmd must be an array of tables ([[gmd]])' }).default([]),
  hageo: HageoSchema.optional(),
});

export type RawConfig = z.output<typeof ConfigSchema>;

/**
 * The mirroring modes and device roles, named once. The schema validates them in the cluster file;
 * the GeoMirror device and the CLI check attribute changes against the same lists. No dependencies,
 * so the device core can import it without loading the schema library.
 */
export const MODES = ['sync', 'mwc', 'async'] as const;
export const ROLES = ['primary', 'secondary', 'none'] as const;
export type Mode = (typeof MODES)[number];
export type Role = (typeof ROLES)[number];

export function isMode(v: unknown): v is Mode {
  return typeof v === 'string' && (MODES as readonly string[]).includes(v);
}

export function isRole(v: unknown): v is Role {
  return typeof v === 'string' && (ROLES as readonly string[]).includes(v);
}

import t from 'tap';
import { missingTools, needsRoot } from '../helpers/env.js';
import { ext4TwoSite } from './e2e.js';

const skip = needsRoot() || missingTools('nbdfuse', 'losetup', 'mkfs.ext4', 'fusermount3', 'cmp', 'e2fsck');
for (const mode of (process.env.GMD_MODES?.split(',') ?? ['sync', 'mwc', 'async']) as Array<'sync' | 'mwc' | 'async'>) {
  t.test(`${mode}: ext4 over nbdfuse+losetup on the primary, two sites on loopback, volumes identical`, { skip }, (t) => ext4TwoSite(t, mode, false));
}

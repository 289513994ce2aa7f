import t from 'tap';
import { parseSize, formatSize } from '../../src/util/size.js';

t.test('parseSize accepts the documented forms', async (t) => {
  t.equal(parseSize('512'), 512);
  t.equal(parseSize('64K'), 65536);
  t.equal(parseSize('256M'), 256 * 1024 ** 2);
  t.equal(parseSize('256MiB'), 256 * 1024 ** 2);
  t.equal(parseSize('1G'), 1024 ** 3);
  t.equal(parseSize('1GiB'), 1024 ** 3);
  t.equal(parseSize('2t'), 2 * 1024 ** 4);
  t.equal(parseSize(4096), 4096);
});

t.test('parseSize rejects garbage with a clear error', async (t) => {
  for (const bad of ['', 'abc', '1.5G', '-1', '10Q', '99999999999999999999', 'G']) {
    t.throws(() => parseSize(bad), { code: 'GEORM_ERR_BAD_SIZE' }, bad);
  }
  t.throws(() => parseSize(-3), { code: 'GEORM_ERR_BAD_SIZE' });
});

t.test('formatSize', async (t) => {
  t.equal(formatSize(512), '512 B');
  t.equal(formatSize(1536), '1.5 KiB');
  t.equal(formatSize(1024 ** 3), '1 GiB');
});

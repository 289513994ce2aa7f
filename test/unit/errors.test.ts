import t from 'tap';
import { GeormError } from '../../src/util/errors.js';

t.test('GeormError carries a stable code', async (t) => {
  const e = new GeormError('GEORM_ERR_X', 'boom');
  t.equal(e.code, 'GEORM_ERR_X');
  t.equal(e.message, 'boom');
  t.ok(e instanceof Error);
});

import t from 'tap';
import { getU16, getU32, putU32 } from '../../nbd/protocol/bytes.js';

t.test('getU32/putU32/getU16 agree with Buffer read/writeUInt32BE and readUInt16BE at every alignment', (t) => {
  const edge = [0, 1, 0x7f, 0x80, 0xff, 0x7fffffff, 0x80000000, 0x80000001, 0xfffffffe, 0xffffffff, 0x12345678];
  let seed = 99;
  const rnd = () => { seed = (seed * 1103515245 + 12345) >>> 0; return seed; };
  const values = [...edge, ...Array.from({ length: 2000 }, rnd)];
  let bad = 0;
  const a = Buffer.alloc(16), b = Buffer.alloc(16);
  for (const v of values) {
    for (let at = 0; at <= 12; at++) {
      a.fill(0xaa); b.fill(0xaa);
      putU32(a, at, v);
      b.writeUInt32BE(v, at);
      if (!a.equals(b)) bad++;
      if (getU32(b, at) !== b.readUInt32BE(at)) bad++;
      if (getU16(b, at) !== b.readUInt16BE(at)) bad++;
    }
  }
  t.equal(bad, 0, `${values.length} values at 13 offsets: same bytes written, same numbers read`);
  t.end();
});

/**
 * Byte-level conformance for what libnbd 1.14 cannot send: every option (including STARTTLS,
 * EXTENDED_HEADERS, unknown and malformed ones), request errors and protocol violations. A
 * violation must end only its own connection, with a log line, while other clients keep working.
 */
import t from 'tap';
import { readFileSync } from 'node:fs';
import { startHarness } from './harness.js';
import { greet, option, reply, replies, infoData, metaData, request, simpleReply, chunk, goTo } from './raw-protocol.js';

const ERR = 0x80000000;
const MiB = 1024 * 1024;

t.test('options', async (t) => {
  const h = await startHarness({ exports: { disk: 4 * MiB, other: 2 * MiB } });
  t.teardown(() => h.close());

  const c = await greet(h.socketPath);
  t.teardown(() => c.destroy());

  option(c, 3); // LIST
  const list = await replies(c);
  t.same(list.slice(0, -1).map((r) => r.data.toString('utf8', 4, 4 + r.data.readUInt32BE(0))), ['disk', 'other']);
  t.match(list[0]!.data.toString('utf8', 8), /test export disk/, 'LIST carries the description');
  t.equal(list.at(-1)!.type, 1);

  option(c, 3, Buffer.from('x'));
  t.equal((await reply(c)).type, ERR + 3, 'LIST with data: ERR_INVALID');

  option(c, 5); // STARTTLS
  t.equal((await reply(c)).type, ERR + 1, 'STARTTLS: ERR_UNSUP (NOTLS server)');
  option(c, 11); // EXTENDED_HEADERS
  t.equal((await reply(c)).type, ERR + 1, 'EXTENDED_HEADERS: ERR_UNSUP');
  option(c, 4242, Buffer.from('junk'));
  const unk = await reply(c);
  t.equal(unk.type, ERR + 1, 'unknown option: ERR_UNSUP');
  t.equal(unk.option, 4242, 'reply echoes the option');

  option(c, 10, metaData('disk', ['base:allocation']));
  t.equal((await reply(c)).type, ERR + 3, 'SET_META_CONTEXT before STRUCTURED_REPLY: ERR_INVALID');
  option(c, 8, Buffer.from('x'));
  t.equal((await reply(c)).type, ERR + 3, 'STRUCTURED_REPLY with data: ERR_INVALID');
  option(c, 8);
  t.equal((await reply(c)).type, 1, 'STRUCTURED_REPLY: ACK');

  option(c, 9, metaData('disk', []));
  let r = await replies(c);
  t.equal(r.length, 2);
  t.equal(r[0]!.type, 4);
  t.equal(r[0]!.data.toString('utf8', 4), 'base:allocation', 'LIST_META_CONTEXT with no query lists base:allocation');
  option(c, 9, metaData('disk', ['base:']));
  t.equal((await replies(c)).length, 2, 'LIST_META_CONTEXT base: lists the namespace');
  option(c, 9, metaData('disk', ['x-other:thing']));
  t.equal((await replies(c)).length, 1, 'unknown namespace: only ACK');
  option(c, 9, metaData('nope', []));
  t.equal((await reply(c)).type, ERR + 6, 'meta context for unknown export: ERR_UNKNOWN');
  option(c, 9, Buffer.from([0, 0, 0, 9, 1]));
  t.equal((await reply(c)).type, ERR + 3, 'malformed meta context request: ERR_INVALID');

  option(c, 6, infoData('disk', [1, 2, 3, 99]));
  r = await replies(c);
  const infos = new Map(r.filter((x) => x.type === 3).map((x) => [x.data.readUInt16BE(0), x.data]));
  t.equal(infos.get(0)!.readBigUInt64BE(2), BigInt(4 * MiB), 'INFO_EXPORT size');
  t.equal(infos.get(1)!.toString('utf8', 2), 'disk', 'INFO_NAME');
  t.equal(infos.get(2)!.toString('utf8', 2), 'test export disk', 'INFO_DESCRIPTION');
  t.equal(infos.get(3)!.readUInt32BE(2), 1, 'INFO_BLOCK_SIZE minimum');
  t.equal(infos.get(3)!.readUInt32BE(10), 32 * MiB, 'INFO_BLOCK_SIZE maximum');
  t.equal(r.at(-1)!.type, 1);

  option(c, 6, infoData('nope'));
  t.equal((await reply(c)).type, ERR + 6, 'INFO for unknown export: ERR_UNKNOWN');
  option(c, 6, Buffer.from([0, 0, 0, 200, 0, 0]));
  t.equal((await reply(c)).type, ERR + 3, 'malformed INFO: ERR_INVALID');

  option(c, 6, infoData(''));
  r = await replies(c);
  t.equal(r[0]!.data.readBigUInt64BE(2), BigInt(4 * MiB), 'default export "" is the first one');

  option(c, 1234567, Buffer.alloc(70 * 1024));
  t.equal((await reply(c)).type, ERR + 9, 'oversized option data is skipped with ERR_TOO_BIG');

  option(c, 2); // ABORT
  t.equal((await reply(c)).type, 1, 'ABORT: ACK');
  t.ok(await c.closedByServer(), 'server closes after ABORT');
});

t.test('EXPORT_NAME with and without NO_ZEROES', async (t) => {
  const h = await startHarness({ exports: { disk: MiB } });
  t.teardown(() => h.close());
  for (const [flags, len] of [[3, 10], [1, 134]] as const) {
    const c = await greet(h.socketPath, flags);
    option(c, 1, Buffer.from('disk'));
    const b = await c.read(len);
    t.equal(b.readBigUInt64BE(0), BigInt(MiB));
    t.equal(b.readUInt16BE(8) & 1, 1, 'HAS_FLAGS');
    c.write(request(0, 0, 7n, 0, 512));
    const sr = await simpleReply(c);
    t.same([sr.error, sr.cookie], [0, 7n]);
    t.equal((await c.read(512)).length, 512);
    c.write(request(2, 0, 8n, 0, 0)); // DISC
    t.ok(await c.closedByServer(), 'DISC closes');
    c.destroy();
  }
  const c = await greet(h.socketPath);
  option(c, 1, Buffer.from('nope'));
  t.ok(await c.closedByServer(), 'EXPORT_NAME of an unknown export closes the connection');
  c.destroy();
});

t.test('transmission: errors keep the connection, replies match the spec', async (t) => {
  const h = await startHarness({ exports: { disk: 4 * MiB, ro: MiB }, readOnly: ['ro'] });
  t.teardown(() => h.close());
  const { c, size } = await goTo(h.socketPath, 'disk', { structured: true, meta: true });
  t.teardown(() => c.destroy());
  t.equal(size, BigInt(4 * MiB));

  const expectSimple = async (req: Buffer, errno: number, what: string) => {
    c.write(req);
    const r = await simpleReply(c);
    t.equal(r.error, errno, what);
  };
  const expectErrorChunk = async (req: Buffer, errno: number, what: string) => {
    c.write(req);
    const ch = await chunk(c);
    t.equal(ch.type, 0x8001, `${what}: error chunk`);
    t.equal(ch.flags & 1, 1, `${what}: DONE`);
    t.equal(ch.data.readUInt32BE(0), errno, what);
  };

  await expectSimple(request(1, 0, 1n, 4 * MiB - 512, 1024, Buffer.alloc(1024, 1)), 28, 'WRITE past the end: ENOSPC');
  await expectErrorChunk(request(0, 0, 2n, 4 * MiB, 1), 22, 'READ past the end: EINVAL');
  await expectErrorChunk(request(0, 0, 3n, 0, 0), 22, 'zero-length READ: EINVAL');
  await expectErrorChunk(request(0, 8, 4n, 0, 512), 22, 'READ with REQ_ONE: EINVAL');
  await expectErrorChunk(request(0, 0, 5n, 0, 33 * MiB), 22, 'READ over 32 MiB: EINVAL');
  await expectErrorChunk(request(0, 4, 6n, 0, 33 * MiB), 75, 'DF READ over 32 MiB: EOVERFLOW');
  await expectErrorChunk(request(0, 0, 7n, 0xffffffffffff0000n, 512), 22, 'READ at a huge offset: EINVAL');
  await expectSimple(request(99, 0, 8n, 0, 512), 22, 'unknown command: EINVAL');
  await expectSimple(request(4, 0, 9n, 4 * MiB, 512), 22, 'TRIM past the end: EINVAL');
  await expectSimple(request(6, 16, 10n, 0, 4096), 95, 'FAST_ZERO without fast zeroing: ENOTSUP');
  await expectSimple(request(6, 0x100, 11n, 0, 4096), 22, 'WRITE_ZEROES with an unknown flag: EINVAL');

  // Valid traffic after the errors: write, read back (structured OFFSET_DATA), block status.
  const data = Buffer.alloc(8192, 0x5a);
  await expectSimple(request(1, 1, 20n, 8192, 8192, data), 0, 'FUA WRITE ok');
  c.write(request(0, 4, 21n, 8192, 8192));
  const rd = await chunk(c);
  t.equal(rd.type, 1, 'OFFSET_DATA');
  t.equal(rd.flags & 1, 1, 'DONE');
  t.equal(rd.cookie, 21n);
  t.equal(rd.data.readBigUInt64BE(0), 8192n);
  t.ok(rd.data.subarray(8).equals(data), 'data read back');
  c.write(request(7, 8, 22n, 0, 65536));
  const bs = await chunk(c);
  t.equal(bs.type, 5, 'BLOCK_STATUS chunk');
  t.equal(bs.data.readUInt32BE(0), 1, 'context id of base:allocation');
  t.equal(bs.data.length, 12, 'REQ_ONE: one extent');
  t.ok(bs.data.readUInt32BE(4) <= 65536, 'extent within the request');
  await expectSimple(request(3, 0, 23n, 0, 0), 0, 'FLUSH ok');
  await expectSimple(request(5, 0, 24n, 0, 4096), 0, 'CACHE ok');
  await expectSimple(request(4, 1, 25n, 0, 4096), 0, 'TRIM ok');
  await expectSimple(request(6, 2, 26n, 0, 4096), 0, 'WRITE_ZEROES NO_HOLE ok');

  // Out-of-order: several requests in one write, all answered, cookies echoed.
  c.write(Buffer.concat([request(0, 0, 30n, 0, 4096), request(0, 0, 31n, 4096, 4096), request(3, 0, 32n, 0, 0)]));
  const cookies = new Set<bigint>();
  for (let i = 0; i < 3; i++) {
    const peek = await c.read(4);
    const magic = peek.readUInt32BE(0);
    if (magic === 0x668e33ef) {
      const rest = await c.read(16);
      cookies.add(rest.readBigUInt64BE(4));
      await c.read(rest.readUInt32BE(12));
    } else {
      const rest = await c.read(12);
      cookies.add(rest.readBigUInt64BE(4));
    }
  }
  t.same([...cookies].sort(), [30n, 31n, 32n], 'every cookie answered once');

  // DISC after a pending request: the reply still arrives, then the server closes.
  c.write(Buffer.concat([request(0, 0, 40n, 0, 65536), request(2, 0, 41n, 0, 0)]));
  const last = await chunk(c);
  t.equal(last.cookie, 40n, 'request before DISC answered');
  t.ok(await c.closedByServer(), 'closed after DISC');

  // Read-only export refuses writes with EPERM and still reads; BLOCK_STATUS without a context is EINVAL.
  const ro = await goTo(h.socketPath, 'ro');
  t.teardown(() => ro.c.destroy());
  t.equal(ro.tflags & 2, 2, 'READ_ONLY flag');
  ro.c.write(request(1, 0, 1n, 0, 512, Buffer.alloc(512)));
  t.equal((await simpleReply(ro.c)).error, 1, 'WRITE on read-only: EPERM');
  ro.c.write(request(4, 0, 2n, 0, 512));
  t.equal((await simpleReply(ro.c)).error, 1, 'TRIM on read-only: EPERM');
  ro.c.write(request(6, 0, 3n, 0, 512));
  t.equal((await simpleReply(ro.c)).error, 1, 'WRITE_ZEROES on read-only: EPERM');
  ro.c.write(request(7, 0, 4n, 0, 512));
  t.equal((await simpleReply(ro.c)).error, 22, 'BLOCK_STATUS without structured replies: EINVAL');
  ro.c.write(request(0, 0, 5n, 0, 512));
  t.equal((await simpleReply(ro.c)).error, 0, 'READ still works');
  await ro.c.read(512);
  t.ok(readFileSync(h.files.ro!).equals(Buffer.alloc(MiB)), 'read-only file unchanged');
});

t.test('violations end only their own connection, with a log line', async (t) => {
  const h = await startHarness({ exports: { disk: MiB } });
  t.teardown(() => h.close());
  const good = await goTo(h.socketPath, 'disk');
  t.teardown(() => good.c.destroy());

  const cases: Array<[string, (path: string) => Promise<{ write: (b: Buffer) => void; closedByServer: () => Promise<boolean>; destroy: () => void }>, Buffer]> = [
    ['bad request magic', async (p) => (await goTo(p, 'disk')).c, Buffer.from('0123456789abcdef0123456789ab')],
    ['oversized WRITE', async (p) => (await goTo(p, 'disk')).c, request(1, 0, 1n, 0, 33 * 1024 * 1024)],
    ['bad option magic', async (p) => greet(p), Buffer.alloc(16, 0x41)],
    ['unknown client flags', async (p) => {
      const { RawClient } = await import('./harness.js');
      const c = await RawClient.connect(p);
      await c.read(18);
      return c;
    }, Buffer.from([0, 0, 0, 0x80])],
  ];
  for (const [what, open, bytes] of cases) {
    const before = h.logs.filter((l) => l.level === 'warn').length;
    const c = await open(h.socketPath);
    c.write(bytes);
    t.ok(await c.closedByServer(), `${what}: connection closed`);
    c.destroy();
    t.ok(h.logs.filter((l) => l.level === 'warn').length > before, `${what}: logged`);
  }
  // Truncated stream: half a header, then EOF.
  const tr = await goTo(h.socketPath, 'disk');
  tr.c.write(request(0, 0, 1n, 0, 512).subarray(0, 10));
  tr.c.socket.end();
  t.ok(await tr.c.closedByServer(), 'truncated stream: closed');
  tr.c.destroy();
  t.ok(h.logs.some((l) => l.msg?.includes('ended inside a message')), 'truncated stream logged');

  good.c.write(request(0, 0, 99n, 0, 512));
  t.equal((await simpleReply(good.c)).cookie, 99n, 'the other client keeps working');
  await good.c.read(512);
  t.ok(h.server.connections >= 1);
});

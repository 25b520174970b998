/**
 * The record splitter (parts of an upload) against a byte-by-byte reference, over random
 * bytes full of quotes, LFs and CRs fed in random slices, with LF or lone-CR line ends and
 * a cap on part bytes; its refusal of a record that never ends; and the part size chosen
 * for an upload of known size.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { partRowsFor } from '../../src/intake/accept.ts';
import { InvalidFileError } from '../../src/core/errors.ts';
import { lineTerminator, RecordSplitter, type Part } from '../../src/intake/splitter.ts';

/** The obvious splitter: one byte at a time (the shipped one jumps from LF to LF). */
function reference(
  data: Buffer, partRecords: number, quoted: boolean, eol = 0x0a, maxPartBytes = Infinity,
): { header: string | undefined; parts: Array<Omit<Part, 'data'> & { data: string }> } {
  let inQuote = false;
  let line = 1;
  let header: Buffer | undefined;
  let start = 0;
  let records = 0;
  let partStart = 1;
  const parts: Array<Omit<Part, 'data'> & { data: string }> = [];
  const cut = (end: number, lastLine: number) => {
    parts.push({ n: parts.length, firstLine: partStart, lastLine, records, data: data.subarray(start, end).toString('latin1') });
    start = end;
    records = 0;
    partStart = lastLine + 1;
  };
  for (let i = 0; i < data.length; i++) {
    const c = data[i]!;
    if (c === 0x22 && quoted) inQuote = !inQuote;
    else if (c === eol) {
      line++;
      if (inQuote) continue;
      if (!header) {
        header = data.subarray(0, i + 1);
        start = i + 1;
        partStart = line;
        continue;
      }
      if (++records >= partRecords || i + 1 - start >= maxPartBytes) cut(i + 1, line - 1);
    }
  }
  if (!header) return { header: data.length > 0 ? data.toString('latin1') : undefined, parts };
  const rest = data.subarray(start);
  if (rest.length > 0 && rest.toString('latin1').trim() !== '') {
    const open = inQuote || rest[rest.length - 1] !== eol;
    if (open) records++;
    cut(data.length, open ? line : line - 1);
  }
  return { header: header.toString('latin1'), parts };
}

function random(seed: number) {
  let x = seed;
  return () => {
    x = (Math.imul(x, 1103515245) + 12345) & 0x7fffffff;
    return x;
  };
}

test('the splitter cuts random bytes exactly like a byte-by-byte scan, whatever the slices', () => {
  const alphabet = Buffer.from('ab",\n\r é');
  for (let seed = 1; seed <= 300; seed++) {
    const next = random(seed);
    const data = Buffer.from(Array.from({ length: 1 + (next() % 3000) }, () => alphabet[next() % alphabet.length]!));
    for (const [quoted, eol, maxPartBytes] of [[true, 0x0a, Infinity], [false, 0x0a, Infinity], [true, 0x0d, Infinity], [true, 0x0a, 40], [false, 0x0d, 25]] as const) {
      for (const partRecords of [1, 3, 50]) {
        const s = new RecordSplitter({ partRecords, quoted, terminator: eol, maxPartBytes });
        const parts: Part[] = [];
        for (let i = 0; i < data.length; ) {
          const k = 1 + (next() % 200);
          parts.push(...s.push(data.subarray(i, i + k)));
          i += k;
        }
        const last = s.end();
        if (last) parts.push(last);
        const want = reference(data, partRecords, quoted, eol, maxPartBytes);
        const got = { header: s.header?.toString('latin1'), parts: parts.map((p) => ({ ...p, data: p.data.toString('latin1') })) };
        assert.deepEqual(got, want, `seed ${seed}, quoted ${quoted}, line end ${eol}, at most ${maxPartBytes} bytes, ${partRecords} records per part`);
      }
    }
  }
});

test('a quoted LF does not end a record; line numbers count it', () => {
  const s = new RecordSplitter({ partRecords: 1, quoted: true });
  const parts = [...s.push(Buffer.from('h\n"a\nb",1\nc,2\n')), s.end()].filter((p) => p !== undefined);
  assert.deepEqual(parts.map((p) => [p.firstLine, p.lastLine, p.data.toString()]), [[2, 3, '"a\nb",1\n'], [4, 4, 'c,2\n']]);
});

test('lone-CR line ends: records and physical lines end at CR; a quoted CR is data', () => {
  const s = new RecordSplitter({ partRecords: 2, quoted: true, terminator: 0x0d });
  const parts = [...s.push(Buffer.from('h,x\ra,1\r"b\rc",2\rd,3')), s.end()].filter((p) => p !== undefined);
  assert.equal(s.header?.toString(), 'h,x\r');
  assert.deepEqual(parts.map((p) => [p.firstLine, p.lastLine, p.records, p.data.toString()]), [[2, 4, 2, 'a,1\r"b\rc",2\r'], [5, 5, 1, 'd,3']]);
});

test('the line terminator of a file: CR only when its first bytes hold a CR and no LF', () => {
  assert.equal(lineTerminator(Buffer.from('a,b\r\nc,d\r\n')), 0x0a);
  assert.equal(lineTerminator(Buffer.from('a,b\nc,d\n')), 0x0a);
  assert.equal(lineTerminator(Buffer.from('a,b\rc,d\r')), 0x0d);
  assert.equal(lineTerminator(Buffer.from('a,b\rc,d\n')), 0x0a, 'mixed: LF (the CSV parser still ends records at the lone CRs)');
  assert.equal(lineTerminator(Buffer.from('a,b')), 0x0a);
});

test('a record that never ends fails the upload once it passes maxRecordBytes, naming its line', () => {
  const unclosed = new RecordSplitter({ partRecords: 100, quoted: true, maxRecordBytes: 64 });
  assert.deepEqual(unclosed.push(Buffer.from('h\na,1\nb,"2\n')), []);
  assert.deepEqual(unclosed.push(Buffer.from('x\n'.repeat(20))), []);
  assert.throws(() => unclosed.push(Buffer.from('y\n'.repeat(20))), (err: Error) => {
    assert.ok(err instanceof InvalidFileError);
    assert.equal(err.message, 'invalid file: the record that starts on line 3 is longer than 64 bytes: a quote is never closed');
    return true;
  });
  const flat = new RecordSplitter({ partRecords: 100, quoted: false, maxRecordBytes: 64 });
  assert.throws(() => flat.push(Buffer.alloc(65, 0x61)), /^InvalidFileError: invalid file: the header is longer than 64 bytes: no line break$/);
  // Long records that end are fine, and the count starts again at each record end.
  const ok = new RecordSplitter({ partRecords: 100, quoted: false, maxRecordBytes: 64 });
  for (let i = 0; i < 10; i++) ok.push(Buffer.from(`${'z'.repeat(60)}\n`));
  assert.equal(ok.end()?.records, 9);
});

test('part size: the configured maximum, or about 4 parts for a smaller file of known size', () => {
  const lines = Buffer.from(Array.from({ length: 500 }, () => 'y'.repeat(99)).join('\n') + '\n'); // 100 bytes a line
  assert.equal(partRowsFor(10_000, undefined, lines), 10_000, 'size unknown');
  assert.equal(partRowsFor(10_000, 3_000_000, lines), 7_500, '30,000 rows: 4 parts');
  assert.equal(partRowsFor(10_000, 5_000_000, lines), 10_000, '50,000 rows: 5 parts of the maximum');
  assert.equal(partRowsFor(10_000, 200_000_000, lines), 10_000, 'a big file: the maximum');
  assert.equal(partRowsFor(10_000, 300_000, lines), 1_000, 'never below 1,000 rows');
  assert.equal(partRowsFor(10_000, 500_000, lines), 1_250, '5,000 rows: 4 parts');
  assert.equal(partRowsFor(200, 5_000_000, lines), 200, 'a smaller maximum wins');
  assert.equal(partRowsFor(10_000, 5_000_000, Buffer.from('no line feed')), 10_000, 'no line in the sample');
});

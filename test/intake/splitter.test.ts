/**
 * The record splitter (parts of an upload) against a byte-by-byte reference, over random
 * bytes full of quotes, LFs and CRs fed in random slices, with LF or lone-CR line ends and
 * a cap on part bytes; quotes read as the CSV parser reads them (stray quotes, text after
 * a closing quote, `""`, a BOM, other delimiters), whole, a byte at a time and in random
 * slices; random CSV whose parts, each parsed on its own as the workers do, give the
 * records of the whole file; its refusal of a record that never ends; and the part size
 * chosen for an upload of known size.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { partRowsFor } from '../../src/intake/accept.ts';
import { InvalidFileError } from '../../src/core/errors.ts';
import { lineTerminator, RecordSplitter, type Part } from '../../src/intake/splitter.ts';
import { CsvError, CsvParser } from '../../src/formats/csv-parser.ts';

/**
 * The obvious splitter: one byte at a time (the shipped one jumps from LF to LF). A quote
 * opens a quoted field only at a field start (first byte, after a BOM, the delimiter, CR
 * or LF) or right after the quote that closed one (`""`); inside one, any quote closes it.
 */
function reference(
  data: Buffer, partRecords: number, quoted: boolean, eol = 0x0a, maxPartBytes = Infinity, delimiter = 0x2c,
): { header: string | undefined; parts: Array<Omit<Part, 'data'> & { data: string }> } {
  let inQuote = false;
  let closed = -2;
  const bom = data[0] === 0xef && data[1] === 0xbb && data[2] === 0xbf;
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
    if (c === 0x22 && quoted) {
      const prev = data[i - 1];
      if (inQuote) {
        inQuote = false;
        closed = i;
      } else if (i === 0 || (i === 3 && bom) || closed === i - 1 || prev === delimiter || prev === 0x0a || prev === 0x0d) {
        inQuote = true;
      }
    } else if (c === eol) {
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
  const alphabet = Buffer.from('ab",;\n\r é');
  for (let seed = 1; seed <= 300; seed++) {
    const next = random(seed);
    const bytes = Array.from({ length: 1 + (next() % 3000) }, () => alphabet[next() % alphabet.length]!);
    if (seed % 10 === 0) bytes.unshift(0xef, 0xbb, 0xbf);
    const data = Buffer.from(bytes);
    for (const [quoted, eol, maxPartBytes, delimiter] of [
      [true, 0x0a, Infinity, 0x2c], [false, 0x0a, Infinity, 0x2c], [true, 0x0d, Infinity, 0x2c], [true, 0x0a, 40, 0x3b], [false, 0x0d, 25, 0x2c],
    ] as const) {
      for (const partRecords of [1, 3, 50]) {
        const s = new RecordSplitter({ partRecords, quoted, terminator: eol, maxPartBytes, delimiter });
        const parts: Part[] = [];
        for (let i = 0; i < data.length; ) {
          const k = 1 + (next() % 200);
          parts.push(...s.push(data.subarray(i, i + k)));
          i += k;
        }
        const last = s.end();
        if (last) parts.push(last);
        const want = reference(data, partRecords, quoted, eol, maxPartBytes, delimiter);
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

type Cut = { header: string | undefined; parts: Array<[firstLine: number, lastLine: number, records: number, data: string]> };

/** Splits data fed in slices of the sizes `size()` gives. */
function splitIn(data: Buffer, size: () => number, options: { partRecords: number; delimiter?: number; terminator?: number }): Cut {
  const s = new RecordSplitter({ quoted: true, ...options });
  const parts: Part[] = [];
  for (let i = 0; i < data.length; ) {
    const k = size();
    parts.push(...s.push(data.subarray(i, i + k)));
    i += k;
  }
  const last = s.end();
  if (last) parts.push(last);
  return { header: s.header?.toString(), parts: parts.map((p) => [p.firstLine, p.lastLine, p.records, p.data.toString()]) };
}

/**
 * The cut of `text` (one record a part unless told), the same whether it is pushed whole,
 * a byte at a time (every boundary: between a delimiter and its quote, between the quotes
 * of `""`, inside a BOM) or in random slices.
 */
function cut(text: string, options: { partRecords?: number; delimiter?: string; terminator?: number } = {}): Cut {
  const data = Buffer.from(text);
  const o = { partRecords: options.partRecords ?? 1, delimiter: (options.delimiter ?? ',').charCodeAt(0), terminator: options.terminator };
  const whole = splitIn(data, () => data.length, o);
  assert.deepEqual(splitIn(data, () => 1, o), whole, 'a byte at a time');
  for (let seed = 1; seed <= 20; seed++) {
    const next = random(seed);
    assert.deepEqual(splitIn(data, () => 1 + (next() % 7), o), whole, `random slices, seed ${seed}`);
  }
  return whole;
}

test('a stray quote in an unquoted field is literal, as the CSV parser reads it: the records after it are cut as usual', () => {
  const csv = 'email,product,kind\nbig50@x.com,Monitor 27",TV\nb@x.com,"Desk, oak",furniture\nc@x.com,Cable 3",misc"\nd@x.com,"two\nlines",x\n';
  assert.deepEqual(cut(csv), {
    header: 'email,product,kind\n',
    parts: [
      [2, 2, 1, 'big50@x.com,Monitor 27",TV\n'],
      [3, 3, 1, 'b@x.com,"Desk, oak",furniture\n'],
      [4, 4, 1, 'c@x.com,Cable 3",misc"\n'],
      [5, 6, 1, 'd@x.com,"two\nlines",x\n'],
    ],
  });
  // Two records a part: the stray quote does not swallow the rest of the file.
  assert.deepEqual(cut(csv, { partRecords: 2 }).parts.map((p) => p.slice(0, 3)), [[2, 3, 2], [4, 6, 2]]);
  // Nor does it make a record that never ends (the upload of a big file was refused).
  const capped = new RecordSplitter({ partRecords: 1000, quoted: true, maxRecordBytes: 64 });
  capped.push(Buffer.from('email,product\nbig50@x.com,Monitor 27"\n'));
  for (let i = 0; i < 20; i++) capped.push(Buffer.from(`lead${i}@x.com,Cable\n`));
  assert.equal(capped.end()?.records, 21);
});

test('text after a closing quote is literal, quotes included (`"ab"c"d` is abc"d)', () => {
  assert.deepEqual(cut('h\n"ab"c"d\n"x"y"\n"e\nf",g\n"p"q"\nr"\n'), {
    header: 'h\n',
    parts: [[2, 2, 1, '"ab"c"d\n'], [3, 3, 1, '"x"y"\n'], [4, 5, 1, '"e\nf",g\n'], [6, 6, 1, '"p"q"\n'], [7, 7, 1, 'r"\n']],
  });
});

test('`""` in a quoted field is one quote: the field goes on, even past line ends', () => {
  assert.deepEqual(cut('h\na"b,"c""d"\n"a""b\nc",1\n"""",2\n"x""",3\nlast,"""q""\n""",4\n"",5\n'), {
    header: 'h\n',
    parts: [
      [2, 2, 1, 'a"b,"c""d"\n'],
      [3, 4, 1, '"a""b\nc",1\n'],
      [5, 5, 1, '"""",2\n'],
      [6, 6, 1, '"x""",3\n'],
      [7, 8, 1, 'last,"""q""\n""",4\n'],
      [9, 9, 1, '"",5\n'],
    ],
  });
});

test('a quoted field holding LF and CRLF line ends, after a stray quote, is never cut', () => {
  assert.deepEqual(cut('id,size,notes\r\n1,5" disk,"line one\r\nline two\nline three"\r\n2,x,y\r\n', { partRecords: 1 }), {
    header: 'id,size,notes\r\n',
    parts: [[2, 4, 1, '1,5" disk,"line one\r\nline two\nline three"\r\n'], [5, 5, 1, '2,x,y\r\n']],
  });
  // Lone-CR line ends: a quote after a CR starts a field too.
  assert.deepEqual(cut('h\rx",y\r"p\rq",z\rw\r', { terminator: 0x0d }), {
    header: 'h\r',
    parts: [[2, 2, 1, 'x",y\r'], [3, 4, 1, '"p\rq",z\r'], [5, 5, 1, 'w\r']],
  });
});

test('a quote right after the delimiter opens a quoted field', () => {
  assert.deepEqual(cut('h,i\nx",y,"p\nq"\nz,"\n"\n,"a\nb"\n'), {
    header: 'h,i\n',
    parts: [[2, 3, 1, 'x",y,"p\nq"\n'], [4, 5, 1, 'z,"\n"\n'], [6, 7, 1, ',"a\nb"\n']],
  });
});

test('a UTF-8 BOM, then a quoted header field: the quote after the BOM opens it (the parser drops the BOM)', () => {
  assert.deepEqual(cut('\uFEFF"na\nme",size 27"\n1,2\n3,"4\n5"\n'), {
    header: '\uFEFF"na\nme",size 27"\n',
    parts: [[3, 3, 1, '1,2\n'], [4, 5, 1, '3,"4\n5"\n']],
  });
  // A BOM anywhere else is data: the quote after it is mid-field, literal.
  assert.deepEqual(cut('h\n\uFEFF"a\nb"\n').parts, [[2, 2, 1, '\uFEFF"a\n'], [3, 3, 1, 'b"\n']]);
});

test('`;` and tab delimiters: a quote after the file\'s delimiter opens a quoted field, after another character it is literal', () => {
  for (const d of [';', '\t']) {
    const csv = `a${d}b\nx"${d}"p\nq"${d}r\ny${d}z\n`;
    assert.deepEqual(cut(csv, { delimiter: d }), {
      header: `a${d}b\n`,
      parts: [[2, 3, 1, `x"${d}"p\nq"${d}r\n`], [4, 4, 1, `y${d}z\n`]],
    }, JSON.stringify(d));
    // Read with ',' (as the parser would read it with ','), the same quotes are literal.
    assert.deepEqual(cut(csv, { delimiter: ',' }).parts.map((p) => p[3]), [`x"${d}"p\n`, `q"${d}r\n`, `y${d}z\n`]);
  }
});

/** Records of chunks of text, each parsed on its own from its first line; an unbalanced quote ends the list. */
function parseEach(chunks: Array<{ text: string; firstLine: number }>, delimiter: string) {
  const rows: string[][] = [];
  const lines: number[] = [];
  const add = (b: { rows: string[][]; lines: number[] }) => {
    rows.push(...b.rows);
    lines.push(...b.lines);
  };
  try {
    for (const c of chunks) {
      const parser = new CsvParser({ delimiter, firstLine: c.firstLine });
      add(parser.push(c.text));
      add(parser.end());
    }
  } catch (err) {
    if (!(err instanceof CsvError)) throw err;
    return { rows, lines, error: err.message };
  }
  return { rows, lines };
}

/** A random CSV: quoted fields (with `""`, delimiters, LF, CRLF), unquoted ones with stray quotes, text after closing quotes; `wild` adds fields of anything. */
function randomCsv(next: () => number, d: string, wild: boolean): string {
  const pick = <T>(xs: readonly T[]) => xs[next() % xs.length]!;
  const some = (xs: readonly string[], max: number) => Array.from({ length: next() % (max + 1) }, () => pick(xs)).join('');
  const records: string[] = [];
  for (let r = 0, n = 1 + (next() % 25); r < n; r++) {
    const fields: string[] = [];
    for (let f = 0, m = 1 + (next() % 4); f < m; f++) {
      const kind = next() % (wild ? 7 : 6);
      if (kind === 0) fields.push('');
      else if (kind <= 2) fields.push(`a${some(['a', '"', 'a'], 4)}`);
      else if (kind <= 4) fields.push(`"${some(['a', '""', d, '\n', '\r\n'], 6)}"${next() % 3 === 0 ? some(['a', '"'], 3) : ''}`);
      else if (kind === 5) fields.push(`${some(['a', '"'], 3)}"`.replace(/^"/, 'a"'));
      else fields.push(some(['a', '"', d, '\n', '\r\n'], 6));
    }
    records.push(fields.join(d));
  }
  const eol = next() % 2 === 0 ? '\n' : '\r\n';
  return (next() % 5 === 0 ? '\uFEFF' : '') + records.join(eol) + (next() % 4 === 0 ? '' : eol);
}

test('random CSV: each part parsed on its own (from its first line, as the workers do) gives the records of the whole file', () => {
  const started = Date.now();
  for (let seed = 1; seed <= 1500; seed++) {
    const next = random(seed);
    const d = [',', ';', '\t'][seed % 3]!;
    const text = randomCsv(next, d, seed % 4 === 0);
    const data = Buffer.from(text);
    const partRecords = 1 + (next() % 4);
    const s = new RecordSplitter({ partRecords, quoted: true, delimiter: d.charCodeAt(0) });
    const parts: Part[] = [];
    for (let i = 0; i < data.length; ) {
      const k = 1 + (next() % 12);
      parts.push(...s.push(data.subarray(i, i + k)));
      i += k;
    }
    const last = s.end();
    if (last) parts.push(last);
    // Decoded as the intake decodes (TextDecoder drops a BOM), the header parsed from line 1.
    const decode = (b: Buffer) => new TextDecoder('utf-8').decode(b);
    const whole = parseEach([{ text: decode(data), firstLine: 1 }], d);
    const split = parseEach([
      ...(s.header ? [{ text: decode(s.header), firstLine: 1 }] : []),
      ...parts.map((p) => ({ text: decode(p.data), firstLine: p.firstLine })),
    ], d);
    assert.deepEqual(split, whole, `seed ${seed}, ${partRecords} records a part: ${JSON.stringify(text)}`);
  }
  assert.ok(Date.now() - started < 10_000, 'quick');
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

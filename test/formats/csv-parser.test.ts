import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CsvError, CsvParser, type CsvOptions, type ParsedBatch } from '../../src/formats/csv-parser.ts';

interface Result {
  rows: string[][];
  lines: number[];
  raws: string[];
  errors: Array<{ line: number; reason: string; raw: string }>;
}

function collect(out: Result, b: ParsedBatch): void {
  assert.equal(b.rows.length, b.lines.length);
  for (let i = 0; i < b.rows.length; i++) {
    out.rows.push(b.rows[i]);
    out.lines.push(b.lines[i]);
    out.raws.push(b.raw(i));
  }
  out.errors.push(...b.errors);
}

/** Parse text pushed in the given chunks (default: one chunk). */
function parse(text: string | string[], opts: Partial<CsvOptions> = {}): Result {
  const p = new CsvParser({ delimiter: ',', ...opts });
  const out: Result = { rows: [], lines: [], raws: [], errors: [] };
  for (const chunk of typeof text === 'string' ? [text] : text) collect(out, p.push(chunk));
  collect(out, p.end());
  return out;
}

const rows = (text: string | string[], opts?: Partial<CsvOptions>) => parse(text, opts).rows;

// A table of small cases: [name, input, expected rows, options?]
const cases: Array<[string, string, string[][], Partial<CsvOptions>?]> = [
  ['simple', 'a,b,c\n1,2,3\n', [['a', 'b', 'c'], ['1', '2', '3']]],
  ['no trailing newline', 'a,b\n1,2', [['a', 'b'], ['1', '2']]],
  ['CRLF endings', 'a,b\r\n1,2\r\n', [['a', 'b'], ['1', '2']]],
  ['lone CR endings', 'a,b\r1,2\r', [['a', 'b'], ['1', '2']]],
  ['mixed endings', 'a\r\nb\nc\rd', [['a'], ['b'], ['c'], ['d']]],
  ['quoted field', '"a",b', [['a', 'b']]],
  ['quoted delimiter', '"a,b",c', [['a,b', 'c']]],
  ['escaped quote', '"say ""hi""",x', [['say "hi"', 'x']]],
  ['only escaped quotes', '""""', [['"']]],
  ['two escaped quotes', '""""""', [['""']]],
  ['empty quoted field', '"",a', [['', 'a']]],
  ['empty quoted last field', 'a,""', [['a', '']]],
  ['line with only ""', '""\n', [['']]],
  ['embedded LF', '"a\nb",c\n', [['a\nb', 'c']]],
  ['embedded CRLF kept', '"a\r\nb",c\r\n', [['a\r\nb', 'c']]],
  ['embedded CR kept', '"a\rb",c\r', [['a\rb', 'c']]],
  ['embedded blank lines', '"a\n\n\nb"\n', [['a\n\n\nb']]],
  ['empty middle field', 'a,,b', [['a', '', 'b']]],
  ['trailing delimiter', 'a,b,\n', [['a', 'b', '']]],
  ['trailing delimiter at EOF', 'a,b,', [['a', 'b', '']]],
  ['leading delimiter', ',a', [['', 'a']]],
  ['only delimiters', ',,\n', [['', '', '']]],
  ['whitespace preserved', ' a , b ,\t', [[' a ', ' b ', '\t']]],
  ['space before quote is unquoted', ' "a",b', [[' "a"', 'b']]],
  ['lenient mid-field quote', 'ab"c,d', [['ab"c', 'd']]],
  ['lenient text after closing quote', '"ab"c,d', [['abc', 'd']]],
  ['lenient quote after closing quote', '"ab"c"d,e', [['abc"d', 'e']]],
  ['lenient space after closing quote', '"ab" ,c', [['ab ', 'c']]],
  ['quote at end of unquoted field', 'ab",c', [['ab"', 'c']]],
  ['accents', 'São Paulo,Zürich,Ærøskøbing\n', [['São Paulo', 'Zürich', 'Ærøskøbing']]],
  ['emoji (surrogate pairs)', '😀,"👍🏽,x"\n', [['😀', '👍🏽,x']]],
  ['CJK', '東京,北京,서울', [['東京', '北京', '서울']]],
  ['semicolon', 'a;b,c;"d;e"', [['a', 'b,c', 'd;e']], { delimiter: ';' }],
  ['tab', 'a\tb c\t"d\te"', [['a', 'b c', 'd\te']], { delimiter: '\t' }],
  ['pipe', 'a|b|"c|d"|', [['a', 'b', 'c|d', '']], { delimiter: '|' }],
  ['ragged rows', 'a,b,c\n1\n1,2,3,4\n', [['a', 'b', 'c'], ['1'], ['1', '2', '3', '4']]],
  ['blank lines skipped', '\n\na\n\r\n\rb\n\n', [['a'], ['b']]],
  ['BOM dropped', '\ufeffa,b\n', [['a', 'b']]],
  ['BOM only at start', 'a,\ufeffb\n', [['a', '\ufeffb']]],
  ['BOM then quote', '\ufeff"a",b', [['a', 'b']]],
  ['single field', 'x', [['x']]],
  ['empty input', '', []],
  ['only newlines', '\r\n\n\r', []],
  ['whitespace-only line is a record', ' \n', [[' ']]],
];

for (const [name, input, expected, opts] of cases) {
  test(`csv: ${name}`, () => {
    assert.deepEqual(rows(input, opts), expected);
  });
}

test('csv: line numbers count physical lines, blank lines and embedded newlines', () => {
  const r = parse('h1,h2\n\n"a\nb",1\r\n"c\r\nd\re",2\n\nlast,3');
  assert.deepEqual(r.rows, [['h1', 'h2'], ['a\nb', '1'], ['c\r\nd\re', '2'], ['last', '3']]);
  assert.deepEqual(r.lines, [1, 3, 5, 9]);
});

test('csv: raw() gives the record text without its terminator', () => {
  const r = parse('\ufeffa,"b\nc"\r\n"x""y",z\r');
  assert.deepEqual(r.raws, ['a,"b\nc"', '"x""y",z']);
  const p = new CsvParser({ delimiter: ',' });
  assert.throws(() => p.push('a\n').raw(1), RangeError);
});

test('csv: unterminated quote at EOF throws CsvError with the line of the quote', () => {
  const p = new CsvParser({ delimiter: ',' });
  assert.deepEqual(p.push('a,b\n\nc,"d\ne\n').rows, [['a', 'b']]);
  assert.throws(
    () => p.end(),
    (err: unknown) =>
      err instanceof CsvError &&
      err.line === 3 &&
      err.message === 'unbalanced quote: the quoted field starting at line 3 is never closed',
  );
});

test('csv: a quote at the very end of the input closes the field', () => {
  assert.deepEqual(rows(['"ab', '"']), [['ab']]);
  assert.deepEqual(rows('"a"'), [['a']]);
});

test('csv: over-long unquoted record is rejected and parsing continues', () => {
  const long = 'x'.repeat(150) + ',' + 'y'.repeat(100);
  const r = parse(`a,b\n${long}\nc,d\n`, { maxRecordChars: 100 });
  assert.deepEqual(r.rows, [['a', 'b'], ['c', 'd']]);
  assert.deepEqual(r.lines, [1, 3]);
  assert.deepEqual(r.errors, [{ line: 2, reason: 'record longer than 100 characters', raw: long.slice(0, 200) + '…' }]);
});

test('csv: limit is inclusive; a short over-long record is reported whole', () => {
  const r = parse(`${'a'.repeat(10)}\n${'b'.repeat(11)}\r\nc`, { maxRecordChars: 10 });
  assert.deepEqual(r.rows, [['a'.repeat(10)], ['c']]);
  assert.deepEqual(r.errors, [{ line: 2, reason: 'record longer than 10 characters', raw: 'b'.repeat(11) }]);
  assert.deepEqual(r.lines, [1, 3]);
});

test('csv: over-long record: quotes past the limit are ignored up to the line end', () => {
  const r = parse(`"q\nq",${'x'.repeat(20)},"open\nnext,row\n`, { maxRecordChars: 20 });
  assert.deepEqual(r.rows, [['next', 'row']]);
  assert.deepEqual(r.lines, [3]);
  assert.equal(r.errors[0].line, 1);
});

test('csv: a quoted field closed past the limit rejects only its record; the next lines keep their numbers', () => {
  const long = `"${'q,\n'.repeat(40)}"`; // 122 chars over 41 lines
  const r = parse(`a,b\n${long},"x\ny",z\nc,d\n`, { maxRecordChars: 100 });
  assert.deepEqual(r.rows, [['a', 'b'], ['c', 'd']]);
  assert.deepEqual(r.lines, [1, 44]);
  assert.deepEqual(r.errors, [{ line: 2, reason: 'record longer than 100 characters', raw: `${long},"x\ny",z` }]);
});

test('csv: a quote still open past the limit is discarded as it arrives, and fails the file at its end', () => {
  const p = new CsvParser({ delimiter: ',', maxRecordChars: 100 });
  assert.deepEqual(p.push('a,b\n1,"never closed\n').rows, [['a', 'b']]);
  for (let i = 0; i < 20; i++) {
    const b = p.push('more text, more\n');
    assert.deepEqual([b.rows, b.errors], [[], []]);
    assert.ok(p.bufferedChars <= 201, `buffered ${p.bufferedChars} chars`);
  }
  assert.throws(
    () => p.end(),
    (err: unknown) =>
      err instanceof CsvError &&
      err.line === 2 &&
      err.message === 'unbalanced quote: the quoted field starting at line 2 is never closed',
  );
});

test('csv: a 3 MB quoted value, pushed in pieces, is one rejected record, not held', () => {
  const p = new CsvParser({ delimiter: ',' }); // default limit: 1 Mi chars
  const out: Result = { rows: [], lines: [], raws: [], errors: [] };
  collect(out, p.push('Name,Email\n"'));
  const mb = 'a""b\r\n'.repeat((1 << 20) / 8);
  for (let i = 0; i < 3; i++) {
    collect(out, p.push(mb));
    if (i >= 1) assert.ok(p.bufferedChars <= 201, `buffered ${p.bufferedChars} chars after ${i + 1} MB`);
  }
  collect(out, p.push('",l1@x.com\r'));
  collect(out, p.push('\nB,l2@x.com\n'));
  collect(out, p.end());
  assert.deepEqual(out.rows, [['Name', 'Email'], ['B', 'l2@x.com']]);
  // 3 MiB / 8 CRLFs inside the value: the next record is that many lines further on.
  assert.deepEqual(out.lines, [1, 3 + 3 * (1 << 17)]);
  assert.deepEqual(out.errors, [{ line: 2, reason: `record longer than ${1 << 20} characters`, raw: `"${mb.slice(0, 199)}…` }]);
});

test('csv: a 50 MB line is discarded as it arrives, not buffered', () => {
  const p = new CsvParser({ delimiter: ',' }); // default limit: 1 Mi chars
  assert.equal(p.push('id,name\n').rows.length, 1);
  const mb = 'z'.repeat(1 << 20);
  const before = process.memoryUsage().heapUsed;
  let maxBuffered = 0;
  let errors: ParsedBatch['errors'] = [];
  for (let i = 0; i < 50; i++) {
    const b = p.push(mb);
    errors = errors.concat(b.errors);
    maxBuffered = Math.max(maxBuffered, p.bufferedChars);
    if (i >= 2) assert.ok(p.bufferedChars <= 201, `buffered ${p.bufferedChars} chars after ${i + 1} MB`);
  }
  const grown = process.memoryUsage().heapUsed - before;
  assert.ok(maxBuffered <= 1 << 20, `buffered ${maxBuffered}`);
  assert.ok(grown < 30e6, `heap grew by ${grown} bytes`);
  const last = p.push('\n2,ok\n');
  assert.deepEqual(last.rows, [['2', 'ok']]);
  assert.deepEqual(last.lines, [3]);
  errors = errors.concat(last.errors);
  assert.equal(errors.length, 1);
  assert.deepEqual(errors[0], { line: 2, reason: `record longer than ${1 << 20} characters`, raw: 'z'.repeat(200) + '…' });
});

test('csv: only the incomplete tail is kept between pushes', () => {
  const p = new CsvParser({ delimiter: ',' });
  p.push('a,b\n1,2\n3,');
  assert.equal(p.bufferedChars, 2);
  p.push('4\n');
  assert.equal(p.bufferedChars, 0);
});

test('csv: CR and LF split across pushes count as one line break', () => {
  const r = parse(['a\r', '\nb\r', '\r\n', 'c'], {});
  assert.deepEqual(r.rows, [['a'], ['b'], ['c']]);
  assert.deepEqual(r.lines, [1, 2, 4]);
});

test('csv: the BOM is dropped even after empty pushes, only once', () => {
  assert.deepEqual(rows(['', '\ufeff', 'a\n', '\ufeffb']), [['a'], ['\ufeffb']]);
});

test('csv: invalid options are rejected', () => {
  assert.throws(() => new CsvParser({ delimiter: ',,' }), RangeError);
  assert.throws(() => new CsvParser({ delimiter: '"' }), RangeError);
  assert.throws(() => new CsvParser({ delimiter: ',', maxRecordChars: 0 }), RangeError);
});

// ---- Property tests: chunking never changes the result --------------------------------

/** mulberry32: a small seeded PRNG so failures reproduce. */
function prng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const PIECES = ['a', 'bc', 'São', '😀', '東京', ' ', '"', '""', ',', ';', '\n', '\r', '\r\n', 'x"y', '"q,"', '\ufeff'];

/** Arbitrary (often malformed) CSV-like text. */
function messyText(rand: () => number, n: number): string {
  let s = rand() < 0.2 ? '\ufeff' : '';
  for (let i = 0; i < n; i++) s += PIECES[Math.floor(rand() * PIECES.length)];
  return s;
}

/** Split text at random places; some runs use 1-char pushes. */
function randomChunks(rand: () => number, text: string): string[] {
  if (rand() < 0.15) return [...text.split(''), ''];
  const out: string[] = [];
  let i = 0;
  while (i < text.length) {
    const n = Math.floor(rand() * (rand() < 0.5 ? 4 : 40));
    out.push(text.slice(i, i + n));
    i += n;
  }
  return out;
}

function outcome(chunks: string[], maxRecordChars: number): Result | string {
  try {
    return parse(chunks, { maxRecordChars });
  } catch (err) {
    if (!(err instanceof CsvError)) throw err;
    return `${err.line}: ${err.message}`;
  }
}

/**
 * A deliberately naive char-by-char reading of the same rules, to check the fast path. A
 * record with a character at start + max is over-long: outside quotes, it ends at the next
 * line terminator; inside a quoted field, where the grammar ends it.
 */
function reference(text: string, max = 1 << 20): Result | string {
  const rows: string[][] = [];
  const lines: number[] = [];
  const raws: string[] = [];
  const errors: Result['errors'] = [];
  let i = text.startsWith('\ufeff') ? 1 : 0;
  let line = 1;
  const n = text.length;
  const eol = (k: number) => text[k] === '\n' || text[k] === '\r';
  while (i < n) {
    if (eol(i)) {
      i += text.startsWith('\r\n', i) ? 2 : 1;
      line++;
      continue;
    }
    const start = i;
    const recLine = line;
    const fields: string[] = [];
    let over = false;
    // Outside quotes, a record character at the limit: discard up to the line end.
    const pastLimit = () => !over && i >= start + max && i < n && !eol(i);
    record: for (;;) {
      let field = '';
      if (pastLimit()) break record;
      if (text[i] === '"') {
        const qLine = line;
        for (i++; ; ) {
          if (i >= n) return `${qLine}: unbalanced quote: the quoted field starting at line ${qLine} is never closed`;
          if (i >= start + max) over = true;
          if (text[i] === '"') {
            if (text[i + 1] !== '"') break;
            field += '"';
            i += 2;
            continue;
          }
          if (text[i] === '\n' || (text[i] === '\r' && text[i + 1] !== '\n')) line++;
          field += text[i++];
        }
        i++;
      }
      while (i < n && text[i] !== ',' && !eol(i)) {
        if (pastLimit()) break record;
        field += text[i++];
      }
      if (pastLimit()) break record;
      fields.push(field);
      if (text[i] !== ',') break;
      i++;
    }
    if (pastLimit()) {
      over = true;
      while (i < n && !eol(i)) i++;
    }
    const raw = text.slice(start, i);
    if (over) errors.push({ line: recLine, reason: `record longer than ${max} characters`, raw: raw.length > 200 ? `${raw.slice(0, 200)}…` : raw });
    else {
      rows.push(fields);
      lines.push(recLine);
      raws.push(raw);
    }
    if (i < n) {
      i += text.startsWith('\r\n', i) ? 2 : 1;
      line++;
    }
  }
  return { rows, lines, raws, errors };
}

test('csv property: random chunking of messy text gives the one-chunk result', () => {
  const rand = prng(20240611);
  for (let run = 0; run < 1000; run++) {
    const text = messyText(rand, 5 + Math.floor(rand() * 80));
    const max = rand() < 0.3 ? 5 + Math.floor(rand() * 30) : 1 << 20;
    const whole = outcome([text], max);
    assert.deepEqual(whole, reference(text, max), `run ${run} (max ${max}): ${JSON.stringify(text)}`);
    for (let k = 0; k < 6; k++) {
      const chunks = randomChunks(rand, text);
      assert.deepEqual(outcome(chunks, max), whole, `run ${run}: ${JSON.stringify(text)} as ${JSON.stringify(chunks)}`);
    }
  }
});

test('csv property: long records across large chunks (pending-record stitching)', () => {
  const rand = prng(99);
  const big = ['x'.repeat(3000), '"' + 'q,\n'.repeat(1500) + '"', 'é'.repeat(5000)];
  for (let run = 0; run < 60; run++) {
    let text = '';
    for (let i = 20 + Math.floor(rand() * 60); i > 0; i--) {
      text += rand() < 0.1 ? big[Math.floor(rand() * big.length)] : PIECES[Math.floor(rand() * PIECES.length)];
    }
    const max = rand() < 0.3 ? 2000 + Math.floor(rand() * 6000) : 1 << 20;
    const whole = outcome([text], max);
    assert.deepEqual(whole, reference(text, max), `run ${run} (max ${max})`);
    for (let k = 0; k < 4; k++) {
      const chunks: string[] = [];
      for (let i = 0; i < text.length; ) {
        const n = Math.floor(rand() * (rand() < 0.5 ? 300 : 9000));
        chunks.push(text.slice(i, i + n));
        i += n;
      }
      assert.deepEqual(outcome(chunks, max), whole, `run ${run}`);
    }
  }
});

/** RFC 4180 quoting of one field when needed. */
function encodeField(v: string): string {
  return /[",\r\n]/.test(v) || v === '' ? `"${v.replaceAll('"', '""')}"` : v;
}

test('csv property: random rows survive serialise -> chunked parse, with line numbers', () => {
  const rand = prng(7);
  const values = ['', 'plain', 'with,comma', 'say "hi"', 'multi\nline', 'cr\rlf\r\nx', ' pad ', 'é😀東', '"', ','];
  for (let run = 0; run < 200; run++) {
    const expected: string[][] = [];
    const expectedLines: number[] = [];
    let text = '';
    let line = 1;
    for (let r = Math.floor(rand() * 15); r > 0; r--) {
      const row: string[] = [];
      for (let f = 1 + Math.floor(rand() * 5); f > 0; f--) row.push(values[Math.floor(rand() * values.length)]);
      // A one-field row holding '' would be an empty line: quote it (encodeField does).
      const record = row.map(encodeField).join(',');
      const eol = ['\n', '\r\n', '\r'][Math.floor(rand() * 3)];
      if (rand() < 0.2) {
        // A blank line (after a lone CR, an LF would just complete a CRLF).
        text += text.endsWith('\r') && eol !== '\r' ? '\r' : eol;
        line++;
      }
      expected.push(row);
      expectedLines.push(line);
      text += record + eol;
      line += 1 + (record.match(/\r\n|\r|\n/g)?.length ?? 0);
    }
    const got = parse(randomChunks(rand, text));
    assert.deepEqual(got.rows, expected, JSON.stringify(text));
    assert.deepEqual(got.lines, expectedLines, JSON.stringify(text));
    assert.deepEqual(got.errors, []);
  }
});

test('firstLine: text from later in a file (an upload part) counts its records, rejects and fatal errors from there', () => {
  const p = new CsvParser({ delimiter: ',', firstLine: 10, maxRecordChars: 8 });
  const b = p.push('a,b\n\nc,d\nwaytoolongline\n"open\n');
  assert.deepEqual(b.rows, [['a', 'b'], ['c', 'd']]);
  assert.deepEqual(b.lines, [10, 12]);
  assert.deepEqual(b.errors.map((e) => e.line), [13]);
  assert.throws(() => p.end(), (err: unknown) => err instanceof CsvError && err.line === 14 && /starting at line 14 is never closed/.test(err.message));
  // end() resets the parser to its first line.
  assert.deepEqual(p.push('e,f\n').lines, [10]);
});

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createDecoder, detectEncoding, excelSeparatorLine, looksBinary, sniffDelimiter, utf16Bom } from '../../src/formats/sniff.ts';
import { detectSample } from '../../src/formats/record-reader.ts';
import { InvalidFileError } from '../../src/core/errors.ts';

const utf8 = (s: string) => new TextEncoder().encode(s);
const latin1 = (s: string) => Uint8Array.from(Buffer.from(s, 'latin1'));

// ---- sniffDelimiter ----------------------------------------------------------------------

test('sniff: each delimiter', () => {
  assert.equal(sniffDelimiter('a,b,c\n1,2,3\n4,5,6\n'), ',');
  assert.equal(sniffDelimiter('a;b;c\n1;2;3\n'), ';');
  assert.equal(sniffDelimiter('a\tb\tc\n1\t2\t3\n'), '\t');
  assert.equal(sniffDelimiter('a|b|c\n1|2|3\n'), '|');
});

test('sniff: delimiters inside quotes are ignored', () => {
  // Commas only inside quoted values; the real separator is ';'.
  assert.equal(sniffDelimiter('"Silva, Ana";"SP, Brasil"\n"Souza, José";"RJ, Brasil"\n'), ';');
  // A quoted field spanning lines does not start a record.
  assert.equal(sniffDelimiter('name|notes\nana|"line one;\nline two; three"\nbob|x\n'), '|');
});

test('sniff: the most consistent field count wins over the most frequent char', () => {
  // Decimal commas: ',' is more frequent but gives 1, 3, 3 fields; ';' gives 2 everywhere.
  assert.equal(sniffDelimiter('preco;peso\n1,50;2,75\n3,10;4,20\n'), ';');
  // Free text with a stray ';' in one row does not beat a consistent ','.
  assert.equal(sniffDelimiter('id,comment\n1,hello; world\n2,ok\n'), ',');
});

test('sniff: ties go to frequency, then to the order , ; TAB |', () => {
  // Both are consistent (2 and 3 fields per row); ';' appears more often.
  assert.equal(sniffDelimiter('a;b;c,d\n1;2;3,4\n'), ';');
  // Exactly equal: ',' first.
  assert.equal(sniffDelimiter('a,b;c\n1,2;3\n'), ',');
  assert.equal(sniffDelimiter('a\tb|c\n1\t2|3\n'), '\t');
});

test('sniff: defaults to comma (single column, empty sample)', () => {
  assert.equal(sniffDelimiter('name\nana\nbob\n'), ',');
  assert.equal(sniffDelimiter(''), ',');
});

test('sniff: BOM, CRLF, blank lines and a sample cut mid-record', () => {
  assert.equal(sniffDelimiter('\ufeffa;b\r\n\r\n1;2\r\n3;4\r\n5;6;7;8;9;1'), ';');
  // The last (cut) record is not counted; the only record is.
  assert.equal(sniffDelimiter('a|b|c'), '|');
});

test('sniff: looks only at the first ~20 records', () => {
  const head = 'a;b\n'.repeat(20);
  const tail = 'x,y,z\n'.repeat(100);
  assert.equal(sniffDelimiter(head + tail), ';');
});

// ---- detectEncoding ----------------------------------------------------------------------

test('encoding: ASCII and valid UTF-8 are utf-8', () => {
  assert.deepEqual(detectEncoding(utf8('plain ascii,1\n')), { encoding: 'utf-8', bom: false });
  assert.deepEqual(detectEncoding(utf8('São Paulo,😀,東京\n')), { encoding: 'utf-8', bom: false });
  assert.deepEqual(detectEncoding(new Uint8Array(0)), { encoding: 'utf-8', bom: false });
});

test('encoding: Latin-1 bytes are windows-1252', () => {
  assert.deepEqual(detectEncoding(latin1('São Paulo,Conceição\n')), { encoding: 'windows-1252', bom: false });
  // 0x80 is € in windows-1252 and never valid alone in UTF-8.
  assert.deepEqual(detectEncoding(Uint8Array.of(0x31, 0x30, 0x80)), { encoding: 'windows-1252', bom: false });
});

test('encoding: UTF-8 BOM', () => {
  assert.deepEqual(detectEncoding(Uint8Array.of(0xef, 0xbb, 0xbf, 0x61)), { encoding: 'utf-8', bom: true });
});

test('encoding: a multi-byte char cut at the end of the sample is still utf-8', () => {
  const bytes = utf8('abc 😀');
  for (let cut = 1; cut <= 3; cut++) {
    assert.equal(detectEncoding(bytes.subarray(0, bytes.length - cut)).encoding, 'utf-8', `cut ${cut}`);
  }
  // ...but a cut char followed by more bytes is not.
  assert.equal(detectEncoding(Uint8Array.of(0xc3, 0x41)).encoding, 'windows-1252');
});

test('encoding: a sample that is the whole file ends there: a lead byte last is windows-1252', () => {
  const bogota = latin1('Email,City\na@x.com,Bogotá'); // no line end: 0xE1 is the last byte
  assert.equal(detectEncoding(bogota).encoding, 'utf-8'); // a 64 KiB sample of a longer file: maybe cut
  assert.equal(detectEncoding(bogota, true).encoding, 'windows-1252');
  // A whole file of valid UTF-8 stays UTF-8.
  assert.equal(detectEncoding(utf8('a@x.com,Bogotá'), true).encoding, 'utf-8');
});

test('encoding: overlongs, surrogates and > U+10FFFF are not UTF-8', () => {
  assert.equal(detectEncoding(Uint8Array.of(0xc0, 0xaf)).encoding, 'windows-1252'); // overlong '/'
  assert.equal(detectEncoding(Uint8Array.of(0xe0, 0x80, 0xaf)).encoding, 'windows-1252'); // overlong
  assert.equal(detectEncoding(Uint8Array.of(0xed, 0xa0, 0x80)).encoding, 'windows-1252'); // surrogate
  assert.equal(detectEncoding(Uint8Array.of(0xf4, 0x90, 0x80, 0x80)).encoding, 'windows-1252'); // > U+10FFFF
  assert.equal(detectEncoding(Uint8Array.of(0xf4, 0x8f, 0xbf, 0xbf)).encoding, 'utf-8'); // U+10FFFF
});

// ---- looksBinary -------------------------------------------------------------------------

test('binary: text is not binary, even with tabs, CR, LF, FF', () => {
  assert.equal(looksBinary(utf8('a\tb\r\nc\fd\n')), false);
  assert.equal(looksBinary(latin1('São Paulo\n')), false);
  assert.equal(looksBinary(new Uint8Array(0)), false);
});

test('binary: NUL bytes, UTF-16 and control-heavy data are binary', () => {
  assert.equal(looksBinary(Uint8Array.of(0x61, 0x00, 0x62)), true);
  assert.equal(looksBinary(Uint8Array.from(Buffer.from('\ufeffa,b\n', 'utf16le'))), true);
  const png = Uint8Array.of(0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x01, 0x02, 0x03, 0x04);
  assert.equal(looksBinary(png), true);
  // One control byte in 20 (5%) is tolerated.
  assert.equal(looksBinary(Uint8Array.from([...utf8('x'.repeat(19)), 0x1b])), false);
});

// ---- Excel's exports: UTF-16 "Unicode Text", the `sep=` hint ------------------------------

test('utf16Bom: the two UTF-16 byte order marks, nothing else', () => {
  assert.equal(utf16Bom(Uint8Array.from(Buffer.from('\ufeffName\tEmail\r\n', 'utf16le'))), 'utf-16le');
  assert.equal(utf16Bom(Uint8Array.from(Buffer.from('\ufeffName\tEmail\r\n', 'utf16le').swap16())), 'utf-16be');
  assert.equal(utf16Bom(utf8('\ufeffName,Email\n')), undefined); // UTF-8's BOM
  assert.equal(utf16Bom(Uint8Array.from(Buffer.from('Name\tEmail\r\n', 'utf16le'))), undefined); // no BOM: binary
  assert.equal(utf16Bom(Uint8Array.of(0xff)), undefined);
  assert.equal(utf16Bom(latin1('ÿþ')), 'utf-16le'); // "ÿþ" in windows-1252 is that BOM: no file starts so
});

test('excelSeparatorLine: exactly `sep=` and one character on the first line', () => {
  assert.equal(excelSeparatorLine('sep=;\r\nName;Email\r\n'), 'sep=;');
  assert.equal(excelSeparatorLine('sep=,\nName,Email\n'), 'sep=,');
  assert.equal(excelSeparatorLine('sep=\t\rName\tEmail\r'), 'sep=\t');
  assert.equal(excelSeparatorLine('\ufeffsep=|\nName|Email\n'), 'sep=|');
  assert.equal(excelSeparatorLine('sep=;'), 'sep=;');
  for (const text of ['Name;Email\nsep=;\n', 'sep=;;\nName\n', 'sep=\nName\n', 'SEP=;\nName\n', ' sep=;\n', 'sep=; \n', 'separator,email\n', '']) {
    assert.equal(excelSeparatorLine(text), undefined, JSON.stringify(text));
  }
});

test('detectSample: UTF-16 text is refused naming what to do, before the binary test', () => {
  for (const bytes of [Buffer.from('\ufeffName\tEmail\r\nA\ta2@x.com\r\n', 'utf16le'), Buffer.from('\ufeffName\tEmail\r\n', 'utf16le').swap16()]) {
    for (const format of ['csv', 'fixed-width'] as const) {
      assert.throws(
        () => detectSample(bytes, bytes.length, format),
        (err: unknown) => err instanceof InvalidFileError && /^invalid file: UTF-16 text \(Excel's "Unicode Text"\).*save it as "CSV UTF-8"/.test(err.message),
      );
    }
  }
  // Without a BOM it is still binary content.
  const bare = Buffer.from('Name\tEmail\r\n', 'utf16le');
  assert.throws(() => detectSample(bare, bare.length, 'csv'), /binary content/);
});

test('detectSample: a CSV whose first line is `sep=;` has that delimiter, and the line is the bytes to skip', () => {
  const file = Buffer.from('sep=;\r\nName;Email\r\nA;a1@x.com\r\n');
  const meta = detectSample(file, file.length, 'csv');
  assert.equal(meta.delimiter, ';');
  assert.deepEqual(meta.hint, { line: 'sep=;', bytes: 'sep=;\r\n'.length });
  // The same delimiter given: no contradiction.
  assert.deepEqual(detectSample(file, file.length, 'csv', { delimiter: ';' }).hint, { line: 'sep=;', bytes: 7 });
  const latin = Buffer.from('sep=;\nNome;Email\nJoão;j@x.com\n', 'latin1');
  const l = detectSample(latin, latin.length, 'csv');
  assert.deepEqual([l.encoding, l.delimiter, l.hint], ['windows-1252', ';', { line: 'sep=;', bytes: 6 }]);
  // A BOM before it is part of the bytes skipped; a lone CR ends it; so does the end of the file.
  const bom = Buffer.from('\ufeffsep=,\nName,Email\n');
  assert.deepEqual(detectSample(bom, bom.length, 'csv').hint, { line: 'sep=,', bytes: 3 + 6 });
  const cr = Buffer.from('sep=\t\rName\tEmail\r');
  assert.deepEqual([detectSample(cr, cr.length, 'csv').delimiter, detectSample(cr, cr.length, 'csv').hint], ['\t', { line: 'sep=\t', bytes: 6 }]);
  const alone = Buffer.from('sep=|');
  assert.deepEqual([detectSample(alone, alone.length, 'csv').delimiter, detectSample(alone, alone.length, 'csv').hint], ['|', { line: 'sep=|', bytes: 5 }]);
  // The hint wins over sniffing: these rows would be sniffed as ';'.
  const hinted = Buffer.from('sep=,\nName;Email;City\nA;a@x.com;Recife\nB;b@x.com;Olinda\n');
  assert.equal(detectSample(hinted.subarray(6), hinted.length - 6, 'csv').delimiter, ';');
  assert.equal(detectSample(hinted, hinted.length, 'csv').delimiter, ',');
  // Without the line, the same file is sniffed as usual, and has no hint.
  const rest = file.subarray('sep=;\r\n'.length);
  assert.deepEqual([detectSample(rest, rest.length, 'csv').delimiter, detectSample(rest, rest.length, 'csv').hint], [';', null]);
  // More after the character: a header, not a hint.
  const header = Buffer.from('sep=;x\nA;b\n');
  assert.equal(detectSample(header, header.length, 'csv').hint, null);
  // Fixed-width files have no hint: the line is theirs to read (as their header).
  assert.equal(detectSample(file, file.length, 'fixed-width').hint, null);
});

test('detectSample: a `sep=` hint contradicting the delimiter given, or for a character Sluice does not read, is refused naming them', () => {
  const file = Buffer.from('sep=;\r\nName;Email\r\nA;a1@x.com\r\n');
  assert.throws(
    () => detectSample(file, file.length, 'csv', { delimiter: ',' }),
    (err: unknown) =>
      err instanceof InvalidFileError &&
      err.message === `invalid file: the first line "sep=;" is Excel's delimiter hint, for ";", but --delimiter "," was given: run it with --delimiter ";" or without --delimiter, or remove that line`,
  );
  const tab = Buffer.from('sep=\t\nName\tEmail\n');
  assert.throws(() => detectSample(tab, tab.length, 'csv', { delimiter: '|' }), /hint, for tab, but --delimiter "\|" was given: run it with --delimiter tab or/);
  for (const c of [':', ' ', '"', 'x']) {
    const odd = Buffer.from(`sep=${c}\nName${c}Email\n`);
    assert.throws(
      () => detectSample(odd, odd.length, 'csv'),
      (err: unknown) => err instanceof InvalidFileError && err.message === `invalid file: the first line ${JSON.stringify(`sep=${c}`)} is Excel's delimiter hint, for ${JSON.stringify(c)}, which is not a delimiter Sluice reads (, ; tab |): save the file with one of those`,
    );
  }
});

// ---- createDecoder -----------------------------------------------------------------------

/** Decode bytes pushed in chunks of `size`. */
function decodeChunked(enc: 'utf-8' | 'windows-1252', bytes: Uint8Array, size: number): string {
  const dec = createDecoder(enc);
  let out = '';
  for (let i = 0; i < bytes.length; i += size) out += dec.write(bytes.subarray(i, i + size));
  return out + dec.end();
}

test('decoder: multi-byte chars split between chunks decode correctly', () => {
  const text = 'São Paulo,😀,東京,Ærø\n'.repeat(3);
  const bytes = utf8(text);
  for (let size = 1; size <= 7; size++) assert.equal(decodeChunked('utf-8', bytes, size), text, `size ${size}`);
});

test('decoder: windows-1252', () => {
  assert.equal(decodeChunked('windows-1252', latin1('São Paulo,Conceição'), 3), 'São Paulo,Conceição');
  assert.equal(decodeChunked('windows-1252', Uint8Array.of(0x80, 0x93, 0x94), 1), '€“”');
});

test('decoder: invalid UTF-8 later in the file throws with its byte offset', () => {
  const dec = createDecoder('utf-8');
  assert.equal(dec.write(utf8('id,name\n')), 'id,name\n'); // 8 bytes
  assert.equal(dec.write(utf8('1,ok\n')), '1,ok\n'); // 5 bytes
  assert.throws(
    () => dec.write(latin1('2,São\n')), // 0xE3 at offset 13 + 3
    (err: unknown) => err instanceof InvalidFileError && /^invalid UTF-8 at byte offset 16\b/.test(err.message),
  );
});

test('decoder: the offset is right when the bad sequence started in the previous chunk', () => {
  const dec = createDecoder('utf-8');
  assert.equal(dec.write(Uint8Array.of(0x61, 0x62, 0xe2, 0x82)), 'ab'); // € cut after 2 of 3 bytes
  assert.throws(() => dec.write(Uint8Array.of(0x41)), /^InvalidFileError: invalid UTF-8 at byte offset 2:/);
});

test('decoder: started past the first bytes of the file (a skipped `sep=` line), it names the file\'s offsets', () => {
  const dec = createDecoder('utf-8', 7);
  assert.equal(dec.write(utf8('id,name\n')), 'id,name\n');
  assert.throws(() => dec.write(latin1('2,São\n')), /^InvalidFileError: invalid UTF-8 at byte offset 18:/); // 7 + 8 + 3
  const cut = createDecoder('utf-8', 7);
  assert.equal(cut.write(Uint8Array.of(0x61, 0xf0, 0x9f)), 'a');
  assert.throws(() => cut.end(), /invalid UTF-8 at byte offset 8: the file ends in the middle/);
});

test('decoder: a file ending in the middle of a char throws at end()', () => {
  const dec = createDecoder('utf-8');
  assert.equal(dec.write(Uint8Array.of(0x61, 0xf0, 0x9f)), 'a');
  assert.throws(() => dec.end(), /invalid UTF-8 at byte offset 1: the file ends in the middle/);
});

test('decoder: a UTF-8 BOM is dropped', () => {
  assert.equal(decodeChunked('utf-8', Uint8Array.of(0xef, 0xbb, 0xbf, 0x61), 1), 'a');
});

/**
 * The worker warm-up (src/intake/warm-up.ts) runs the part job's own row path on each
 * pipeline's sample: the sample must parse with the real file's header rule and stage every
 * row, or the warm-up would warm the reject path instead. No database.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { mapHeader, RowMapper } from '../../src/engine/row-mapper.ts';
import { parserFor, stagingText } from '../../src/intake/part-job.ts';
import { warmUp } from '../../src/intake/warm-up.ts';
import { BufferedRejects } from '../../src/load/rejects.ts';
import { purchases } from '../../src/pipelines/purchases.ts';

test('the purchases sample stages every row, with the columns of the real file', () => {
  const [header, ...rows] = purchases.sample!.split('\n');
  const parser = parserFor('fixed-width', null, 1);
  const names = [parser.push(`${header}\n${rows[0]}\n`), parser.end()].flatMap((b) => b.rows)[0]!;
  assert.deepEqual(names, ['CPF', 'PRIVATE', 'INCOMPLETO', 'DATA DA ÚLTIMA COMPRA', 'TICKET MÉDIO', 'TICKET DA ÚLTIMA COMPRA', 'LOJA MAIS FREQUÊNTE', 'LOJA DA ÚLTIMA COMPRA']);
  const rejects = new BufferedRejects('00000000-0000-0000-0000-000000000000');
  const mapper = new RowMapper(purchases, mapHeader(purchases, names), 0, rejects, { trackKeys: false });
  const text = [...stagingText(`${rows.join('\n')}\n`, parserFor('fixed-width', null, 2), mapper, { parse: 0 })].join('');
  assert.deepEqual([mapper.read, mapper.accepted, rejects.lines.length], [4, 4, 0]);
  // Both document types and both NULL and filled values are met, as in base_teste.txt.
  const staged = text.trimEnd().split('\n').map((l) => l.split('\t'));
  assert.deepEqual(staged.map((f) => f[3]), ['cpf', 'cpf', 'cpf', 'cnpj']);
  assert.deepEqual(staged.map((f) => f[7]), ['2010-01-13', '\\N', '2012-02-29', '2013-11-01']);
});

test('warmUp runs every sample through the row path and stages all of its rows', () => {
  assert.deepEqual(warmUp(), { rows: 5000 });
});

/** wholeNumber: plain decimal digits only, what `Number` alone would let through refused. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { wholeNumber } from '../../src/core/whole-number.ts';

test('digits give their number; anything Number would also take is refused', () => {
  assert.equal(wholeNumber('0'), 0);
  assert.equal(wholeNumber('007'), 7);
  assert.equal(wholeNumber('9007199254740991'), 9007199254740991);
  for (const bad of ['', ' ', ' 7', '7 ', '0x10', '1e3', '1.0', '-1', '+1', '1_000', '12345678901234567']) {
    assert.equal(wholeNumber(bad), undefined, JSON.stringify(bad));
  }
});

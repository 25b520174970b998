/**
 * The intake merge's memory of the key hashes it has met (merge-job.ts SeenHashes): exact
 * in a Set up to 500,000 hashes, then a KeyFilter that keeps every hash met before it. A
 * hash it forgets would let a key's later row be merged before an earlier one.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { SeenHashes, suspectKeys } from '../../src/intake/merge-job.ts';

test('a hash met before is always reported, before and after the switch to the filter; new ones (nearly) never', () => {
  const seen = new SeenHashes();
  const hash = (i: number) => Math.imul(i + 1, 0x9e3779b1) | 0; // distinct for distinct i < 2^32
  for (let i = 0; i < 400_000; i++) assert.equal(seen.add(hash(i)), false);
  // Exact while under the limit: every repeat found.
  for (let i = 0; i < 400_000; i += 997) assert.equal(seen.add(hash(i)), true);
  // Past 500,000 hashes they move to the filter: still every repeat found...
  let newAsMet = 0;
  for (let i = 400_000; i < 700_000; i++) if (seen.add(hash(i))) newAsMet++;
  for (let i = 0; i < 700_000; i += 101) assert.equal(seen.add(hash(i)), true, `hash ${i}`);
  // ...and few new ones taken for met (a Bloom filter's false positives are only moved rows).
  assert.ok(newAsMet < 100, `${newAsMet} new hashes reported as met`);
});

test('suspectKeys: repeats within the part and keys of earlier parts, and the part row count', () => {
  const seen = new SeenHashes();
  assert.deepEqual(suspectKeys('1,2,3', seen), { hashes: 3, suspects: new Set() });
  assert.deepEqual(suspectKeys('4,5,4,-2147483648,2', seen), { hashes: 5, suspects: new Set([4, 2]) });
  assert.deepEqual(suspectKeys(null, seen), { hashes: 0, suspects: new Set() });
});

/**
 * The keys an import has met so far, without holding them: a blocked Bloom filter (2^27
 * bits, 16 MB; the 6 probes of a key fall in one 64-byte block: one cache miss per key).
 * `add` answers whether the key may have been added before: always true for a key added
 * before, rarely for a new one (a few hundred in 5M distinct keys). Callers treat "true" as
 * "maybe a duplicate" and check it in SQL: the row mapper of `sluice import`, and the
 * intake merge (over Postgres' hashtext of the keys it finds in staged parts).
 */
export class KeyFilter {
  private readonly bits = new Uint8Array(1 << 24);

  /** Adds a text key (hashed here). */
  addKey(k: string): boolean {
    // Two 32-bit hashes in one pass: FNV-1a and a multiply-xor.
    let h1 = 0x811c9dc5;
    let h2 = 0x9747b28c;
    for (let i = 0; i < k.length; i++) {
      const c = k.charCodeAt(i);
      h1 = Math.imul(h1 ^ c, 0x01000193);
      h2 = Math.imul(h2 ^ c, 0x5bd1e995);
      h2 ^= h2 >>> 15;
    }
    return this.add(h1, h2);
  }

  /** Adds a key known by one 32-bit hash (the second is derived from it). */
  addHash(h: number): boolean {
    // murmur3's finalizer: a second hash independent enough of the first.
    let x = h ^ (h >>> 16);
    x = Math.imul(x, 0x85ebca6b);
    x ^= x >>> 13;
    x = Math.imul(x, 0xc2b2ae35);
    return this.add(h, x ^ (x >>> 16));
  }

  /** Adds a key by two 32-bit hashes: h1 picks the block, probes h2 + i * step inside it. */
  private add(h1: number, h2: number): boolean {
    const bits = this.bits;
    const base = ((h1 >>> 14) & 0x3ffff) << 6;
    const step = (h1 & 0x3fff) | 1;
    let met = true;
    for (let i = 0; i < 6; i++) {
      const b = (h2 + Math.imul(i, step)) & 511;
      const byte = base + (b >>> 3);
      const bit = 1 << (b & 7);
      if ((bits[byte]! & bit) === 0) {
        bits[byte] = bits[byte]! | bit;
        met = false;
      }
    }
    return met;
  }
}

/**
 * The keys a merge has met so far, as a Bloom filter over their 32-bit hashes (Postgres'
 * `hashtext`; two bit positions over 2^27 bits, 16 MB): a hash never added is never
 * reported as met; one added is. A false "met" (two keys with the same hashtext, or bits
 * set by others: about 0.1% of the keys at 2,000,000 keys) only sends its rows to the last
 * merge instead of a chunk, which is still correct (merge-job.ts).
 */
const BITS = 27;
const MASK = (1 << BITS) - 1;

export class KeyFilter {
  private readonly bits = new Uint8Array(1 << (BITS - 3));

  /** Adds a key's hash; returns whether it may have been added before. */
  add(hash: number): boolean {
    // The second position from a murmur3 finalizer of the hash: independent enough of the first.
    let h = hash ^ (hash >>> 16);
    h = Math.imul(h, 0x85ebca6b);
    h ^= h >>> 13;
    h = Math.imul(h, 0xc2b2ae35);
    h ^= h >>> 16;
    const a = this.set(hash & MASK);
    const b = this.set(h & MASK);
    return a && b;
  }

  /** Sets one bit; true when it was set already. */
  private set(bit: number): boolean {
    const byte = bit >>> 3;
    const mask = 1 << (bit & 7);
    const was = (this.bits[byte]! & mask) !== 0;
    this.bits[byte] = this.bits[byte]! | mask;
    return was;
  }
}

/** The dev provider simulator serves exactly the bytes it was given, whatever its chunking. */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { startProviderSimulator, type ProviderSimulator } from '../../src/dev/provider-simulator.ts';

let sim: ProviderSimulator;
before(async () => {
  sim = await startProviderSimulator();
});
after(() => sim.close());

test('a character cut by the 16 KiB chunking (an emoji, a 2- or 3-byte one) reaches the client whole', async () => {
  const head = '<eventList><output><base_event base_event_id="1" sell_mode="online" title="';
  // Each character at every offset around the cut at byte (and, in ASCII, code unit) 16,384.
  for (const char of ['🎸', 'ñ', '€']) {
    for (let at = 16_384 - 4; at <= 16_384; at++) {
      const feed = `${head}${'x'.repeat(at - head.length)}${char} rock"></base_event></output></eventList>`;
      sim.setResponses([feed]);
      const served = await (await fetch(sim.url)).text();
      assert.equal(served, feed, `${char} at ${at}`);
    }
  }
});

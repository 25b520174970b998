/**
 * Fault injection for the crash tests: while the file named by the environment variable
 * `name` exists, the caller waits here (a worker holding a part with its rows COPYed, an
 * import between a chunk's preparation and its writes). Unset: returns at once.
 */
export async function faultPause(name: 'SLUICE_FAULT_PAUSE_FILE' | 'SLUICE_FAULT_PAUSE_APPLY_FILE'): Promise<void> {
  const file = process.env[name];
  if (!file) return;
  const { existsSync } = await import('node:fs');
  while (existsSync(file)) await new Promise((r) => setTimeout(r, 50));
}

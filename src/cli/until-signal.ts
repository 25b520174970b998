/**
 * Resolves at the first SIGINT or SIGTERM, for a long-running command to stop gracefully.
 * The handlers are `once`: a second signal during the stop gets Node's default (exit now).
 */
export function untilSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    process.once('SIGINT', () => resolve('SIGINT'));
    process.once('SIGTERM', () => resolve('SIGTERM'));
  });
}

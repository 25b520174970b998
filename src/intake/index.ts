/** The intake service (issue 3): uploads -> parts -> queue -> workers -> merge. */
export { acceptUpload, type AcceptOptions } from './accept.ts';
export { cancelImport } from './cancel.ts';
export type { IntakeContext } from './context.ts';
export { fetchRemote } from './remote.ts';
export { importStatus, listImports, type ImportStatus } from './status.ts';
export { startWorkers, type RunningWorkers } from './worker.ts';

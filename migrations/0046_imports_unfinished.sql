-- The reaper of imports whose owner died (every serve, every 30 s) and every `sluice import`
-- at its start read the unfinished imports only (src/db/sql/imports.ts failOrphans): a few
-- rows, however many finished imports the table keeps. Without it each read scanned them all.
CREATE INDEX imports_unfinished ON imports (id) WHERE status IN ('queued', 'running');

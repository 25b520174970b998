-- The sweep of syncs whose process died (failInterruptedSyncs, run before every sync) reads
-- the running ones only: a few rows, however many syncs a year leaves behind.
CREATE INDEX provider_syncs_running ON provider_syncs (id) WHERE status = 'running';

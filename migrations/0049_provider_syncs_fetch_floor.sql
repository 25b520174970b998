-- The highest fetch number merged so far (mergeStage's floor: a fetch numbered below it may
-- only add what is not stored): read by every sync's merge, one index probe instead of a scan
-- of every sync ever recorded.
CREATE INDEX provider_syncs_completed_fetch_seq ON provider_syncs (fetch_seq) WHERE status = 'completed';

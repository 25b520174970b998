-- Where each part's time goes on its worker (ms: parse, copy, commit...), next to the
-- merge's timings in imports.timings: the intake benchmark prints both as a timeline.
ALTER TABLE import_parts ADD COLUMN timings jsonb;

-- Which resource a CRM source's last fetch was (src/pipelines/crm/sources.ts): a SHA-256
-- (hex) of its location without the password (or a user given alone, a token) but with
-- its query (`?date=2024-01-01`, `?account=a`): a query names the resource, a password
-- never does. `location` is kept for display only: it masks every query value
-- (`?date=***`), so two resources showed alike and the second was asked conditionally with
-- the first one's validators (a version-counter ETag answered 304: stale rows stayed
-- staged). A request is conditional only when this hash is unchanged. NULL (rows from
-- before this migration): another source, so one unconditional fetch, then as usual.
ALTER TABLE crm_sources ADD COLUMN location_sha256 text;

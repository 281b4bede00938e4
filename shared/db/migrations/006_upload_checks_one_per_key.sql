-- An upload key is used by the first bytes a job checked there: one row per key from now on (a later job that
-- finds other bytes at the key is refused with `upload_changed`), and `last_used_at` keeps a used upload from
-- the reaper's UPLOAD_RETENTION_HOURS cleanup while jobs keep naming it.
DELETE FROM upload_checks a USING upload_checks b
 WHERE a.key = b.key AND (a.checked_at, a.etag) > (b.checked_at, b.etag);
CREATE UNIQUE INDEX upload_checks_one_per_key ON upload_checks (key);
ALTER TABLE upload_checks ADD COLUMN last_used_at timestamptz NOT NULL DEFAULT now();
CREATE INDEX upload_checks_last_used_at ON upload_checks (last_used_at);

-- A request fingerprint (source identity, times, options, pipeline version): an identical request is
-- finished from the earlier job's result.
ALTER TABLE jobs ADD COLUMN fingerprint text;

CREATE INDEX idx_jobs_fingerprint ON jobs (fingerprint) WHERE fingerprint IS NOT NULL AND status = 'done';

-- A job can be canceled (POST /api/jobs/{id}/cancel): a terminal status like done, failed and expired.
ALTER TABLE jobs DROP CONSTRAINT jobs_status_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_status_check
    CHECK (status IN ('queued', 'processing', 'done', 'failed', 'expired', 'canceled'));

-- A canceled job's staging objects are deleted by the reaper like any ended job's.
DROP INDEX idx_jobs_staging_pending;
CREATE INDEX idx_jobs_staging_pending ON jobs (created_at)
    WHERE staging_cleaned_at IS NULL AND status IN ('done', 'failed', 'expired', 'canceled');

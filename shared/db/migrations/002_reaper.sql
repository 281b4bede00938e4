-- The reaper (services/reaper): a record of which ended jobs had their staging objects deleted, and the
-- partial indexes that keep each of its scans to the few rows it has work for.

-- Set once the objects under staging/<jobId>/ of an ended job were deleted; NULL while there is work to do.
ALTER TABLE jobs ADD COLUMN staging_cleaned_at timestamptz;

-- Ended jobs whose staging is still there. Keyed by created_at, which never changes: an index on a column the
-- heartbeat writes (updated_at, last_heartbeat_at) would cost every progress write its HOT update.
CREATE INDEX idx_jobs_staging_pending ON jobs (created_at)
    WHERE staging_cleaned_at IS NULL AND status IN ('done', 'failed', 'expired');

-- The outbox: queued rows never published (the gateway died between the insert and the publish).
CREATE INDEX idx_jobs_outbox ON jobs (created_at) WHERE status = 'queued' AND published_at IS NULL;

-- "Does a live job still use this content-hashed result?" before a result object is deleted.
CREATE INDEX idx_jobs_done_result_video_key ON jobs (result_video_key) WHERE status = 'done';
CREATE INDEX idx_jobs_done_result_srt_key ON jobs (result_srt_key) WHERE status = 'done';

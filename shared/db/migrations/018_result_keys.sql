-- Result files by role (shared/jobs/outputs.py): one jsonb object {"srt": key, "poster": key, …} instead of a column
-- per file type, so a stage's new result file needs no migration. The clip keeps result_video_key.
ALTER TABLE jobs ADD COLUMN result_keys jsonb NOT NULL DEFAULT '{}'::jsonb;

-- Rows written before: their subtitle keys move into result_keys (the old columns stay, unread, for replicas
-- of the previous release still running during an upgrade; a later migration may drop them).
UPDATE jobs SET result_keys = jsonb_strip_nulls(
    jsonb_build_object('srt', result_srt_key, 'vtt', result_vtt_key, 'words', result_words_key))
WHERE result_srt_key IS NOT NULL OR result_vtt_key IS NOT NULL OR result_words_key IS NOT NULL;

-- "Does a live job still use this content-hashed result?" before the reaper deletes a result object.
CREATE INDEX idx_jobs_done_result_keys ON jobs USING gin (result_keys jsonb_path_ops) WHERE status = 'done';

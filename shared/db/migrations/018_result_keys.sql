-- Result files by role (shared/jobs/outputs.py): one jsonb object {"srt": key, "poster": key, …} instead of a column
-- per file type, so a stage's new result file needs no migration. The clip keeps result_video_key.
ALTER TABLE jobs ADD COLUMN result_keys jsonb NOT NULL DEFAULT '{}'::jsonb;

-- Rows written before: their subtitle keys move into result_keys. The old columns stay for one release, for
-- replicas of the previous release still running during an upgrade: this release's COMPLETE writes them too and
-- its readers fall back to them where result_keys lacks the role (shared/db/jobs.py LEGACY_KEY_COLUMNS), so a
-- row either release completes is shown, reused and reaped right by both. A later migration drops them.
UPDATE jobs SET result_keys = jsonb_strip_nulls(
    jsonb_build_object('srt', result_srt_key, 'vtt', result_vtt_key, 'words', result_words_key))
WHERE result_srt_key IS NOT NULL OR result_vtt_key IS NOT NULL OR result_words_key IS NOT NULL;

-- "Does a live job still use this content-hashed result?" before the reaper deletes a result object
-- (RESULT_KEY_IN_USE, shared/db/jobs.py, one lookup per result file of every expiring job). Needed: the roles
-- with no column of their own (poster, sprite, thumbnails) are found only through `result_keys @>`, and without
-- it every such lookup scans all done rows of every partition. Its build takes a SHARE lock (inserts wait) but
-- indexes only done rows, those within RETENTION_HOURS; CREATE INDEX CONCURRENTLY is refused on a partitioned
-- table and inside the migration's transaction.
CREATE INDEX idx_jobs_done_result_keys ON jobs USING gin (result_keys jsonb_path_ops) WHERE status = 'done';

-- Subtitles (services/transcriber): the WebVTT and words-JSON result keys beside result_srt_key (001).
ALTER TABLE jobs ADD COLUMN result_vtt_key text;
ALTER TABLE jobs ADD COLUMN result_words_key text;

-- "Does a live job still use this content-hashed result?" before the reaper deletes a subtitle object.
CREATE INDEX idx_jobs_done_result_vtt_key ON jobs (result_vtt_key) WHERE status = 'done';
CREATE INDEX idx_jobs_done_result_words_key ON jobs (result_words_key) WHERE status = 'done';

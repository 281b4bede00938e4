-- Batches (POST /api/jobs with `clips`): one job per clip, the source fetched and staged once for all of them.
-- `clips` keeps each clip's [startSec, endSec] (the fetcher stages their union); `staged` is what the first job
-- of the batch staged (shared/db/batches.py: the source's identity and duration, and one object per span), or
-- `stage_error` the permanent error that staging met (the batch's other jobs fail with it without a new read).
CREATE TABLE batches (
    id                 uuid        PRIMARY KEY,
    owner              text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    source             jsonb       NOT NULL,
    clips              jsonb       NOT NULL,
    job_ids            uuid[]      NOT NULL,
    staged             jsonb,
    stage_error        jsonb,
    staging_cleaned_at timestamptz
);
-- The reaper's batch staging cleanup looks only at batches with staged objects not yet deleted.
CREATE INDEX idx_batches_staged_uncleaned ON batches (created_at) WHERE staged IS NOT NULL AND staging_cleaned_at IS NULL;

-- Admission of a key's batch of p_count jobs with p_clip_seconds in all, atomic across gateway replicas (the
-- same advisory lock as admit_job): the first quota the whole batch would exceed, or NULL when it fits.
CREATE FUNCTION admit_batch(p_owner text, p_max_in_flight integer, p_max_jobs_per_day integer,
                            p_max_source_seconds_per_day double precision, p_count integer,
                            p_clip_seconds double precision)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    day_start timestamptz := date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    in_flight integer;
    today_jobs integer;
    today_seconds double precision;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('clipjet-quota:' || current_schema() || ':' || p_owner));
    SELECT count(*) INTO in_flight FROM jobs WHERE owner = p_owner AND status IN ('queued', 'processing');
    IF in_flight + p_count > p_max_in_flight THEN
        RETURN 'jobs_in_flight';
    END IF;
    SELECT count(*), coalesce(sum((request->>'endSec')::float8 - (request->>'startSec')::float8), 0)
      INTO today_jobs, today_seconds
      FROM jobs WHERE owner = p_owner AND created_at >= day_start;
    IF today_jobs + p_count > p_max_jobs_per_day THEN
        RETURN 'jobs_per_day';
    END IF;
    IF today_seconds + p_clip_seconds > p_max_source_seconds_per_day THEN
        RETURN 'source_seconds_per_day';
    END IF;
    RETURN NULL;
END $$;

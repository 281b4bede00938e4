-- Jobs, range-partitioned by day on created_at (the time inside the UUIDv7 id), and their append-only events.
CREATE TABLE jobs (
    id                uuid        NOT NULL,
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    status            text        NOT NULL DEFAULT 'queued'
                      CHECK (status IN ('queued', 'processing', 'done', 'failed', 'expired')),
    priority          text        NOT NULL DEFAULT 'normal' CHECK (priority IN ('fast', 'normal', 'bulk')),
    shard             integer     NOT NULL DEFAULT 0,
    request           jsonb       NOT NULL,
    stage             text,
    progress          real        NOT NULL DEFAULT 0,
    attempts          integer     NOT NULL DEFAULT 0,
    last_heartbeat_at timestamptz,
    published_at      timestamptz,
    expires_at        timestamptz,
    result_video_key  text,
    result_srt_key    text,
    result            jsonb,
    error_code        text,
    error_message     text,
    PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);

CREATE TABLE jobs_default PARTITION OF jobs DEFAULT;

CREATE INDEX idx_jobs_status_created_at ON jobs (status, created_at);
CREATE INDEX idx_jobs_expires_at ON jobs (expires_at);

CREATE TABLE job_events (
    id     bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id uuid        NOT NULL,
    ts     timestamptz NOT NULL DEFAULT clock_timestamp(),
    type   text        NOT NULL,
    data   jsonb       NOT NULL DEFAULT '{}'::jsonb
);

CREATE INDEX idx_job_events_job_id_ts ON job_events (job_id, ts);

-- job_events is append-only: rows are never changed.
CREATE FUNCTION job_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'job_events is append-only';
END $$;

CREATE TRIGGER job_events_no_update BEFORE UPDATE ON job_events
    FOR EACH ROW EXECUTE FUNCTION job_events_append_only();

-- Creates the daily partitions of jobs from today through today + days_ahead (UTC); idempotent.
CREATE FUNCTION ensure_job_partitions(days_ahead integer) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    day     date;
    name    text;
    created integer := 0;
BEGIN
    -- Replicas starting together (and every gateway at the day's turn) call this at once: one at a time.
    PERFORM pg_advisory_xact_lock(hashtext('clipjet-partitions:' || current_schema()));
    FOR offset_days IN 0..days_ahead LOOP
        day := (now() AT TIME ZONE 'UTC')::date + offset_days;
        name := 'jobs_' || to_char(day, 'YYYYMMDD');
        IF to_regclass(quote_ident(current_schema()) || '.' || name) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF jobs FOR VALUES FROM (%L) TO (%L)',
                name, day::timestamp AT TIME ZONE 'UTC', (day + 1)::timestamp AT TIME ZONE 'UTC'
            );
            created := created + 1;
        END IF;
    END LOOP;
    RETURN created;
END $$;

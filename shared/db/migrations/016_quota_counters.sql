-- Quota admission in constant time: admit_job read a key's jobs in flight and today's jobs row by row, under
-- the key's lock, so one key's submissions slowed down as its day filled up. Two counters, kept by triggers in
-- the transaction that changes a job row (so they are exact, on every way a row is written), replace the scans.

-- A key's jobs queued or processing.
CREATE TABLE key_in_flight (
    owner text    PRIMARY KEY,
    jobs  integer NOT NULL
);
-- A key's jobs and clip seconds per UTC day of created_at.
CREATE TABLE key_days (
    owner          text             NOT NULL,
    day            date             NOT NULL,
    jobs           integer          NOT NULL,
    source_seconds double precision NOT NULL,
    PRIMARY KEY (owner, day)
);

INSERT INTO key_in_flight (owner, jobs)
SELECT owner, count(*) FROM jobs WHERE owner IS NOT NULL AND status IN ('queued', 'processing') GROUP BY owner;
INSERT INTO key_days (owner, day, jobs, source_seconds)
SELECT owner, (created_at AT TIME ZONE 'UTC')::date, count(*),
       coalesce(sum((request->>'endSec')::float8 - (request->>'startSec')::float8), 0)
FROM jobs WHERE owner IS NOT NULL GROUP BY 1, 2;

CREATE FUNCTION jobs_count_owner() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    delta integer;
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO key_days AS d (owner, day, jobs, source_seconds)
        VALUES (NEW.owner, (NEW.created_at AT TIME ZONE 'UTC')::date, 1,
                coalesce((NEW.request->>'endSec')::float8 - (NEW.request->>'startSec')::float8, 0))
        ON CONFLICT (owner, day) DO UPDATE
            SET jobs = d.jobs + 1, source_seconds = d.source_seconds + excluded.source_seconds;
        delta := CASE WHEN NEW.status IN ('queued', 'processing') THEN 1 ELSE 0 END;
    ELSE
        delta := (CASE WHEN NEW.status IN ('queued', 'processing') THEN 1 ELSE 0 END)
               - (CASE WHEN OLD.status IN ('queued', 'processing') THEN 1 ELSE 0 END);
    END IF;
    IF delta <> 0 THEN
        INSERT INTO key_in_flight AS f (owner, jobs) VALUES (NEW.owner, delta)
        ON CONFLICT (owner) DO UPDATE SET jobs = f.jobs + excluded.jobs;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_count_owner_insert AFTER INSERT ON jobs
    FOR EACH ROW WHEN (NEW.owner IS NOT NULL) EXECUTE FUNCTION jobs_count_owner();
CREATE TRIGGER jobs_count_owner_status AFTER UPDATE OF status ON jobs
    FOR EACH ROW WHEN (NEW.owner IS NOT NULL AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION jobs_count_owner();

-- The same answers as before (010_api_keys.sql), from the counters.
-- One job is a batch of one: admit_batch (below) reads the counters for both.
CREATE OR REPLACE FUNCTION admit_job(p_owner text, p_max_in_flight integer, p_max_jobs_per_day integer,
                                     p_max_source_seconds_per_day double precision, p_clip_seconds double precision)
RETURNS text LANGUAGE sql AS $$
    SELECT admit_batch(p_owner, p_max_in_flight, p_max_jobs_per_day, p_max_source_seconds_per_day, 1,
                       p_clip_seconds)
$$;

-- A batch's admission (014_batches.sql) and a job's read the counters: the key's lock, then each quota.
CREATE OR REPLACE FUNCTION admit_batch(p_owner text, p_max_in_flight integer, p_max_jobs_per_day integer,
                                       p_max_source_seconds_per_day double precision, p_count integer,
                                       p_clip_seconds double precision)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    in_flight integer;
    today_jobs integer;
    today_seconds double precision;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('clipjet-quota:' || current_schema() || ':' || p_owner));
    SELECT coalesce((SELECT jobs FROM key_in_flight WHERE owner = p_owner), 0) INTO in_flight;
    IF in_flight + p_count > p_max_in_flight THEN
        RETURN 'jobs_in_flight';
    END IF;
    SELECT coalesce(d.jobs, 0), coalesce(d.source_seconds, 0) INTO today_jobs, today_seconds
      FROM (SELECT 1) AS one
      LEFT JOIN key_days d ON d.owner = p_owner AND d.day = (now() AT TIME ZONE 'UTC')::date;
    IF today_jobs + p_count > p_max_jobs_per_day THEN
        RETURN 'jobs_per_day';
    END IF;
    IF today_seconds + p_clip_seconds > p_max_source_seconds_per_day THEN
        RETURN 'source_seconds_per_day';
    END IF;
    RETURN NULL;
END $$;

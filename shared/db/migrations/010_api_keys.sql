-- API keys (services/gateway/auth.py): only a SHA-256 of each key's secret is stored. A key's id is the public
-- part of the key itself (`cj_<id>_<secret>`), so a lookup is by primary key.
CREATE TABLE api_keys (
    id                         text        PRIMARY KEY,
    secret_sha256              bytea       NOT NULL,
    name                       text        NOT NULL,
    admin                      boolean     NOT NULL DEFAULT false,
    priorities                 text[]      NOT NULL,
    max_in_flight              integer     NOT NULL,
    max_jobs_per_day           integer     NOT NULL,
    max_source_seconds_per_day double precision NOT NULL,
    created_at                 timestamptz NOT NULL DEFAULT now(),
    revoked_at                 timestamptz
);

-- The key that made a job (NULL: published straight to NATS, or AUTH=off).
ALTER TABLE jobs ADD COLUMN owner text;
-- A key's jobs newest first (listing, the daily quotas).
CREATE INDEX idx_jobs_owner_created_at ON jobs (owner, created_at DESC, id DESC) WHERE owner IS NOT NULL;
-- A key's jobs in flight (the in-flight quota).
CREATE INDEX idx_jobs_owner_in_flight ON jobs (owner) WHERE status IN ('queued', 'processing');

-- Idempotency keys belong to the caller: the same key string from two API keys names two different requests.
ALTER TABLE idempotency_keys ADD COLUMN owner text NOT NULL DEFAULT '';
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_pkey;
ALTER TABLE idempotency_keys ADD PRIMARY KEY (owner, key);

-- Sliding-window rate limit shared by every gateway replica: request counts per subject and fixed window; the
-- window before the current one is weighted by how much of it still lies inside the sliding window.
-- UNLOGGED: counts are worth losing in a crash rather than a WAL write per request.
CREATE UNLOGGED TABLE rate_windows (
    subject      text    NOT NULL,
    window_start bigint  NOT NULL,
    hits         integer NOT NULL,
    PRIMARY KEY (subject, window_start)
);

-- Admission of a key's new job, atomic across gateway replicas (one advisory lock per key for the transaction):
-- the name of the first quota the job would exceed, or NULL when it fits. Call in the transaction that inserts.
CREATE FUNCTION admit_job(p_owner text, p_max_in_flight integer, p_max_jobs_per_day integer,
                          p_max_source_seconds_per_day double precision, p_clip_seconds double precision)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    day_start timestamptz := date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    in_flight integer;
    today_jobs integer;
    today_seconds double precision;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('clipjet-quota:' || current_schema() || ':' || p_owner));
    SELECT count(*) INTO in_flight FROM jobs WHERE owner = p_owner AND status IN ('queued', 'processing');
    IF in_flight + 1 > p_max_in_flight THEN
        RETURN 'jobs_in_flight';
    END IF;
    SELECT count(*), coalesce(sum((request->>'endSec')::float8 - (request->>'startSec')::float8), 0)
      INTO today_jobs, today_seconds
      FROM jobs WHERE owner = p_owner AND created_at >= day_start;
    IF today_jobs + 1 > p_max_jobs_per_day THEN
        RETURN 'jobs_per_day';
    END IF;
    IF today_seconds + p_clip_seconds > p_max_source_seconds_per_day THEN
        RETURN 'source_seconds_per_day';
    END IF;
    RETURN NULL;
END $$;

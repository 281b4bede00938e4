-- POST /api/jobs in one round trip (services/gateway/submit.py): the Idempotency-Key's earlier job, the key's
-- quotas (admit_job, under its per-key lock), the key's claim, the job row and its `queued` event, in the one
-- transaction of a single statement. Returns (outcome, job_id, request_sha256):
--   ('inserted', p_id, NULL); ('replay', the earlier job, the earlier request's hash); (<quota name>, NULL, NULL).
-- Nothing is written unless the outcome is 'inserted'.
CREATE FUNCTION submit_job(
    p_id uuid, p_created_at timestamptz, p_priority text, p_shard integer, p_request jsonb, p_owner text,
    p_low timestamptz, p_high timestamptz,
    p_idem_key text, p_idem_owner text, p_idem_sha256 text,
    p_max_in_flight integer, p_max_jobs_per_day integer, p_max_source_seconds_per_day double precision,
    p_clip_seconds double precision,
    OUT outcome text, OUT job_id uuid, OUT request_sha256 text
) LANGUAGE plpgsql AS $$
BEGIN
    IF p_idem_key IS NOT NULL THEN
        SELECT k.job_id, k.request_sha256 INTO job_id, request_sha256
          FROM idempotency_keys k WHERE k.owner = p_idem_owner AND k.key = p_idem_key;
        IF FOUND THEN
            outcome := 'replay';
            RETURN;
        END IF;
    END IF;
    IF p_max_in_flight IS NOT NULL THEN
        outcome := admit_job(p_owner, p_max_in_flight, p_max_jobs_per_day, p_max_source_seconds_per_day,
                             p_clip_seconds);
        IF outcome IS NOT NULL THEN
            RETURN;
        END IF;
    END IF;
    IF p_idem_key IS NOT NULL THEN
        INSERT INTO idempotency_keys (key, request_sha256, job_id, owner)
        VALUES (p_idem_key, p_idem_sha256, p_id, p_idem_owner)
        ON CONFLICT (owner, key) DO NOTHING;
        IF NOT FOUND THEN  -- a request with the same key was committed meanwhile: it made the job
            SELECT k.job_id, k.request_sha256 INTO job_id, request_sha256
              FROM idempotency_keys k WHERE k.owner = p_idem_owner AND k.key = p_idem_key;
            outcome := 'replay';
            RETURN;
        END IF;
    END IF;
    INSERT INTO jobs (id, created_at, priority, shard, request, status, owner)
    SELECT p_id, p_created_at, p_priority, p_shard, p_request, 'queued', p_owner
    WHERE NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = p_id AND j.created_at >= p_low AND j.created_at < p_high);
    IF NOT FOUND THEN
        outcome := 'exists';
        job_id := p_id;
        RETURN;
    END IF;
    INSERT INTO job_events (job_id, type, data) VALUES (p_id, 'queued', jsonb_build_object('priority', p_priority));
    outcome := 'inserted';
    job_id := p_id;
END $$;

-- Idempotency-Key of POST /api/jobs: the same key and body give the same job.
CREATE TABLE idempotency_keys (
    key            text        PRIMARY KEY,
    request_sha256 text        NOT NULL,
    job_id         uuid        NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX idx_idempotency_keys_created_at ON idempotency_keys (created_at);

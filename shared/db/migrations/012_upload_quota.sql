-- Storage is part of a key's share: every upload slot is counted (its signed size) against the key's bytes per
-- UTC day, admitted atomically across gateway replicas (one advisory lock per key for the transaction).
ALTER TABLE api_keys ADD COLUMN max_upload_bytes_per_day bigint NOT NULL DEFAULT 107374182400;  -- 100 GiB

CREATE TABLE upload_slots (
    key        text        PRIMARY KEY,
    owner      text        NOT NULL,
    size       bigint      NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idx_upload_slots_owner_created_at ON upload_slots (owner, created_at);

-- Record a key's new upload slot of p_size bytes unless that would take its slots this UTC day over p_max:
-- true when recorded. Call in its own transaction.
CREATE FUNCTION admit_upload(p_owner text, p_key text, p_size bigint, p_max bigint)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    day_start timestamptz := date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    today bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('clipjet-upload-quota:' || current_schema() || ':' || p_owner));
    SELECT coalesce(sum(size), 0) INTO today FROM upload_slots WHERE owner = p_owner AND created_at >= day_start;
    IF today + p_size > p_max THEN
        RETURN false;
    END IF;
    INSERT INTO upload_slots (key, owner, size) VALUES (p_key, p_owner, p_size);
    RETURN true;
END $$;

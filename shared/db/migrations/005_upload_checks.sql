-- Uploads a fetcher has checked (media, within the size limit) with their sha256: the object's ETag and size
-- name the exact bytes checked (an overwrite changes them), so the check and the hash are done once.
CREATE TABLE upload_checks (
    key        text        NOT NULL,
    etag       text        NOT NULL,
    size       bigint      NOT NULL,
    sha256     text        NOT NULL,
    checked_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (key, etag, size)
);

-- Services may run as a role without DDL rights (DB_APP_ROLE, granted by `clipjet init`): the reaper still creates
-- the next days' partitions and drops old ones, through these two functions, which run as their owner (the role
-- that migrates). Each is pinned to this schema (and pg_temp last), so a caller's search_path cannot redirect it.

-- Drop one daily partition of `jobs` in this schema; false (nothing done) for any other table name.
CREATE FUNCTION drop_job_partition(partition text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    IF partition !~ '^jobs_[0-9]{8}$' OR NOT EXISTS (
        SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = to_regclass(quote_ident(current_schema()) || '.jobs')
          AND c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema())
          AND c.relname = partition
    ) THEN
        RETURN false;
    END IF;
    EXECUTE format('DROP TABLE %I', partition);
    RETURN true;
END $$;

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION ensure_job_partitions(integer) SECURITY DEFINER SET search_path = %I, pg_temp',
                   current_schema());
    EXECUTE format('ALTER FUNCTION drop_job_partition(text) SECURITY DEFINER SET search_path = %I, pg_temp',
                   current_schema());
END $$;

-- Only the owner and the roles `clipjet init` grants (DB_APP_ROLE) may call them.
REVOKE EXECUTE ON FUNCTION ensure_job_partitions(integer), drop_job_partition(text) FROM PUBLIC;

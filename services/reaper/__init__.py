"""The reaper: outbox, expiry, stuck jobs, staging cleanup and partitions, one pass every REAPER_INTERVAL_SEC."""

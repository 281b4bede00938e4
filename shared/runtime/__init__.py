"""The worker runtime every process shares: the NATS bus, the stage worker, start-up through outages, the ops port,
metrics, tracing, logs, CPU limits, retries and breakers."""

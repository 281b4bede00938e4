"""The notifier: POSTs a job's view to its webhook when the job ends, signed, retried through JetStream.

It reads the end events' stream (`<NATS_STREAM>_EVENTS`) with one durable consumer (`notifier`, shared/runtime/bus.py);
`handler.handle` makes one delivery per event and says when to try again, `run.run_notifier` acks or naks with
that delay, so a retry waits in JetStream, not in memory: a restart loses nothing.
"""

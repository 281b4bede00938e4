"""The API client behind `clipjet clip` and `clipjet jobs`: HTTP (httpx), uploads, the job's event stream (with a
polling fallback), downloads and the progress display. It imports no server module (no NATS, PostgreSQL, S3 SDK,
PyAV or Whisper), so the command starts in a fraction of a second."""

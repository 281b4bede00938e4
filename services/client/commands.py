"""`clipjet clip` and `clipjet jobs`: the gateway's API for people, from a terminal or a script.

Exit status: 0 when the clip is saved (or the list printed), 1 when the job failed or the gateway refused
(the error code and message on stderr), 2 for a usage error, 130 when interrupted (the job keeps running).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from shared.jobs.contracts import PRIORITIES, JobList, JobView
from shared.jobs.timecode import InvalidTimecode, format_timecode, parse_timecode
from shared.settings import load_client_settings

from .api import Api, ApiError
from .display import Display, make_display
from .follow import FollowTimeout, follow
from .results import save_results
from .text import clean
from .upload import upload_file

COMMANDS = ("clip", "jobs")
YOUTUBE_HOSTS = ("youtube.com", "youtu.be", "youtube-nocookie.com")  # and their subdomains: source type youtube
DEFAULT_TIMEOUT_SEC = 3600.0  # longest `clip` waits for its job by default, s
UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
AUTH_HINT = "set CLIPJET_API_KEY (`clipjet keys create`; the local stack's is in .data/stack.env)"


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    clip = sub.add_parser("clip", help="cut a clip from a file, URL or YouTube link and download it",
                          description="Cut SOURCE from --start to --end on the gateway at CLIPJET_API_URL, show its "
                                      "progress, and save the clip (and subtitles) here.")
    clip.add_argument("source", metavar="SOURCE", help="a local file (uploaded), an http(s) URL or a YouTube link")
    clip.add_argument("--start", required=True, type=_time, help="seconds or [HH:]MM:SS[.ms], e.g. 1:02.5")
    clip.add_argument("--end", required=True, type=_time, help="seconds or [HH:]MM:SS[.ms], e.g. 1:30")
    clip.add_argument("--precision", choices=("auto", "frame", "keyframe"), default="auto",
                      help="frame: exact frames; keyframe: fastest, starts at the keyframe before --start")
    clip.add_argument("--subs", action="store_true", help="subtitles by Whisper, saved as .srt and .vtt next to it")
    clip.add_argument("--burn", action="store_true", help="burn the subtitles into the picture (implies --subs)")
    clip.add_argument("--lang", help="the speech's language code, e.g. en (implies --subs; default: detected)")
    clip.add_argument("--reframe", choices=("9:16", "1:1", "4:5"),
                      help="a new frame for shorts: cropped to this aspect (or --pad), in the same encode")
    clip.add_argument("--pad", action="store_true", help="with --reframe: fit the whole picture, with black bars")
    clip.add_argument("--focus-x", type=_fraction, help="with --reframe crop: where the window's centre lies across "
                                                        "the picture, 0 (left) to 1 (right); default 0.5")
    clip.add_argument("--priority", choices=PRIORITIES, default="normal")
    clip.add_argument("-o", "--output", type=Path, help="where to save the clip (default: <source>_<start>-<end>.mp4)")
    clip.add_argument("--json", action="store_true", help="print the job's final view as JSON, nothing else on stdout")
    clip.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_SEC, help="longest wait for the job, s")
    clip.add_argument("--poll", action="store_true", help="poll the job instead of reading its event stream")
    jobs = sub.add_parser("jobs", help="list your recent jobs")
    jobs.add_argument("--limit", type=_positive, default=20, help="how many, newest first (at most 100)")
    jobs.add_argument("--status", choices=("queued", "processing", "done", "failed", "expired", "canceled"))
    jobs.add_argument("--json", action="store_true", help="print the API's answer as JSON")


def main(argv: list[str]) -> int:
    """`clipjet clip|jobs …` on its own parser: no server module is imported, so it starts fast."""
    parser = argparse.ArgumentParser(prog="clipjet")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    settings = load_client_settings(on_note=lambda note: print(note, file=sys.stderr))
    api = Api(settings.clipjet_api_url, settings.clipjet_api_key, settings.clipjet_http_timeout_sec)
    try:
        if args.command == "jobs":
            return _jobs(api, args)
        return _clip(api, args, settings.clipjet_poll_sec)
    except ApiError as exc:
        return _fail(args, exc)
    finally:
        api.close()


def _time(text: str) -> float:
    try:
        return parse_timecode(text)
    except InvalidTimecode as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from exc
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: at least 1")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from exc
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{value:g}: from 0 to 1")
    return value


def _clip(api: Api, args: argparse.Namespace, poll_sec: float) -> int:
    human = sys.stderr if args.json else sys.stdout  # with --json stdout carries the JSON alone
    display = make_display(human, live=human.isatty())
    made: list[str] = []  # the job's id, once the gateway took it
    try:
        try:
            raw, view, paths = _make_clip(api, args, poll_sec, display, made)
        finally:
            display.close()  # the live bar stops before anything else is written
    except KeyboardInterrupt:
        running = f"; job {clean(made[0])} keeps running (`clipjet jobs` shows it)" if made else ""
        print(f"interrupted{running}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except FollowTimeout as exc:
        return _fail(args, ApiError(0, "timeout", str(exc)))
    if not paths:
        return _job_failed(args, raw, view)
    for line in _summary(view, paths):
        print(line, file=human)
    if args.json:
        print(json.dumps(raw))
    return 0


def _make_clip(api: Api, args: argparse.Namespace, poll_sec: float, display: Display,
               made: list[str]) -> tuple[dict[str, Any], JobView, list[Path]]:
    """Upload (a local file), submit, follow, download: the final view and the saved files (none: it failed)."""
    source, stem = _source(args.source, api, display)
    out = _output(args, stem)
    made.append(api.create_job(_job_body(args, source)))
    display.line(f"job       {clean(made[0])}")
    raw, view = follow(api, made[0], display.job, deadline=time.monotonic() + args.timeout, poll_sec=poll_sec,
                       use_stream=not args.poll, on_note=display.line)
    if view.status != "done" or view.urls is None:
        return raw, view, []
    return raw, view, save_results(api, view.urls, out, display)


def _output(args: argparse.Namespace, stem: str) -> Path:
    """Where the clip goes: -o, or the default name (in -o when that is a folder, as `cp` does)."""
    name = f"{stem}_{args.start:g}-{args.end:g}.mp4"
    if args.output is None:
        return Path(name)
    return args.output / name if args.output.is_dir() else args.output


def _job_body(args: argparse.Namespace, source: dict[str, str]) -> dict[str, Any]:
    body: dict[str, Any] = {"source": source, "startSec": args.start, "endSec": args.end,
                            "precision": args.precision, "priority": args.priority}
    if args.subs or args.burn or args.lang:
        body["subs"] = {"enabled": True, "burnIn": args.burn, **({"lang": args.lang} if args.lang else {})}
    if args.reframe:
        body["reframe"] = {"aspect": args.reframe, "mode": "pad" if args.pad else "crop",
                           **({"focusX": args.focus_x} if args.focus_x is not None else {})}
    return body


def _source(text: str, api: Api, display: Display) -> tuple[dict[str, str], str]:
    """The job's source for SOURCE (a local file is uploaded first), and a name for the saved clip."""
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text):
        parts = urlsplit(text)
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise ApiError(0, "invalid_source", f"{text!r}: a URL source is http(s)://host/…")
        host = parts.hostname.lower()
        if any(host == name or host.endswith(f".{name}") for name in YOUTUBE_HOSTS):
            video = parse_qs(parts.query).get("v", [""])[0] or parts.path.rstrip("/").rsplit("/", 1)[-1]
            return {"type": "youtube", "url": text}, _safe_stem(video, "youtube")
        return {"type": "url", "url": text}, _safe_stem(Path(parts.path).stem, "clip")
    path = Path(text)
    if not path.is_file():
        raise ApiError(0, "invalid_source", f"{text!r} is no file here, nor an http(s) URL")
    key = upload_file(api, path, display.upload(path.name, path.stat().st_size))
    return {"type": "upload", "key": key}, _safe_stem(path.stem, "clip")


def _safe_stem(name: str, fallback: str) -> str:
    return UNSAFE_NAME.sub("_", name).strip("._")[:80] or fallback


def _summary(view: JobView, paths: list[Path]) -> list[str]:
    lines = []
    if result := view.result:
        lines.append(f"clip      {paths[0]}  ({format_timecode(result.actual_start_sec)} to "
                     f"{format_timecode(result.actual_end_sec)}, {result.duration_sec:.2f} s, "
                     f"{result.size / 1e6:.1f} MB, {clean(result.cut_path)})")
    else:
        lines.append(f"clip      {paths[0]}")
    lines.extend(f"subtitles {path}" for path in paths[1:])
    return lines


def _job_failed(args: argparse.Namespace, raw: dict[str, Any], view: JobView) -> int:
    code = view.error_code or view.status
    print(clean(f"error: job {view.id} {view.status}: {code}: {view.error_message or view.status}"),
          file=sys.stderr)
    if args.json:
        print(json.dumps(raw))
    return EXIT_FAILED


def _fail(args: argparse.Namespace, exc: ApiError) -> int:
    hint = f" ({AUTH_HINT})" if exc.status == 401 else ""
    print(f"error: {clean(exc)}{hint}", file=sys.stderr)
    if getattr(args, "json", False):
        body = exc.body if isinstance(exc.body, dict) and "error" in exc.body else {
            "error": {"code": exc.code, "message": exc.message}}
        print(json.dumps(body))
    return EXIT_FAILED


def _jobs(api: Api, args: argparse.Namespace) -> int:
    raw, listed = api.list_jobs(min(args.limit, 100), args.status)
    if args.json:
        print(json.dumps(raw))
        return 0
    print(_table(listed))
    return 0


def _table(listed: JobList) -> str:
    rows: list[tuple[str, ...]] = [("ID", "STATUS", "PROGRESS", "CREATED", "RANGE", "SOURCE / ERROR")]
    for job in listed.jobs:
        request = job.request
        where = f"{_when(request.start_sec)}-{_when(request.end_sec)}" if request else "-"
        source = (getattr(request.source, "url", None) or getattr(request.source, "key", "")) if request else ""
        detail = f"{job.error_code}: {job.error_message or ''}" if job.error_code else source
        progress = f"{job.stage or ''} {job.progress:.0%}".strip() if job.status in ("queued", "processing") else ""
        cells = (job.id, job.status, progress, job.created_at[:19].replace("T", " "), where, detail)
        rows.append(tuple(clean(cell)[:70] for cell in cells))  # the gateway's text, safe on a terminal
    if len(rows) == 1:
        return "no jobs yet"
    widths = [max(len(row[n]) for row in rows) for n in range(len(rows[0]) - 1)]
    return "\n".join("  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]]).rstrip()
                     for row in rows)


def _when(value: float | str) -> str:
    return format_timecode(value) if isinstance(value, float | int) else str(value)

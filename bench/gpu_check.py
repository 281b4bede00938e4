"""GPU check: NVENC encoding and CUDA batched transcription, end to end on the real stack, in one short run.

    bench/gpu_check.sh [--json FILE]          # = PYTHONPATH=$PWD .venv/bin/python -m bench.gpu_check
    bench/gpu_check.sh --cpu                  # the same steps with libx264 and CPU ASR, small media (a dry run)

Without an NVIDIA GPU (no `nvidia-smi`, or one that lists none) it prints `SKIPPED: no NVIDIA GPU (why)` and exits
0 before making media or starting a server. With one it:

1. lists what the run needs and what is missing (each on its own line): `ffmpeg -encoders` naming h264_nvenc and
   a one-frame NVENC test encode (shared/media/hwenc.py), CTranslate2's CUDA device count, faster-whisper and the
   speech model, espeak-ng (the speech), nats-server, weed and PostgreSQL (the stack);
2. NVENC against libx264 on the same 1080p clip: bare ffmpeg, same decode, same filters, frames per second;
3. batched ASR in x real time: 16 copies of 60 s of speech transcribed at once through the transcriber's engine
   (ASR_DEVICE=cuda, cross-job batching), with ASR_GPU_BATCH 1, 8 and 16;
4. the out-of-memory fallback: in a child process the engine is loaded, then all GPU memory but
   OOM_LEAVE_MB is taken (CUDA driver API), then clips are transcribed with ASR_GPU_BATCH=OOM_BATCH: the batch
   sizes that failed (halved each time) and where the clips finally ran are printed;
5. the real stack (bench/stack.py: NATS, S3, PostgreSQL, gateway and one process per stage) with
   VIDEO_ENCODER=h264_nvenc and ASR_DEVICE=cuda: a re-encode job and a subtitles job (burned in), POST -> done.

Each part that cannot run is reported, the others still run. Exit code: 0 when every part passed (or skipped),
1 when a part failed or a precondition is missing. Designed to end within 8 minutes on a GPU machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NVIDIA_SMI_TIMEOUT_SEC = 20.0
FFMPEG_TIMEOUT_SEC = 300.0
NVENC = "h264_nvenc"
NO_NVENC_GPUS = ("H100", "H200", "H800", "A100", "A800", "A30")  # data-centre chips without an NVENC engine
BATCHES = (1, 8, 16)
ASR_CLIPS = 16  # clips transcribed at once (as many concurrent jobs)
OOM_BATCH = 512  # absurd: halved on each out-of-memory
OOM_LEAVE_MB = 256  # GPU memory left free for the engine once the model is loaded
OOM_CLIPS = 8
CHILD_TIMEOUT_SEC = 240.0
MB = 1 << 20


@dataclass(frozen=True)
class Sizes:
    """Media and work sizes: the GPU run's, or the small ones of `--cpu` (a dry run of the same steps)."""

    encode_size: str = "1920x1080"
    encode_seconds: float = 20.0
    speech_seconds: float = 60.0
    asr_clips: int = ASR_CLIPS
    batches: tuple[int, ...] = BATCHES
    model: str = "base"


CPU_SIZES = Sizes(encode_size="320x180", encode_seconds=2.0, speech_seconds=12.0, asr_clips=1, batches=(1,),
                  model="tiny.en")


@dataclass
class Report:
    """What the run found: `parts` (name -> figures) and `problems` (one line each; any makes the exit 1)."""

    gpu: str = ""
    parts: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def fail(self, part: str, why: str) -> None:
        self.problems.append(f"{part}: {why}")
        print(f"FAILED {part}: {why}", flush=True)

    def add(self, part: str, figures: Any) -> None:
        self.parts[part] = figures
        print(f"{part}: {json.dumps(figures)}", flush=True)


# --- 0. is there an NVIDIA GPU -------------------------------------------------------------------------------------


def nvidia_gpu() -> tuple[str, str]:
    """(the GPUs as nvidia-smi names them, "") or ("", why there is none)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "", "nvidia-smi not found"
    argv = [smi, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_SEC, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return "", f"nvidia-smi did not answer: {exc!r}"
    lines = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0:
        said = (done.stderr.strip() or done.stdout.strip()).splitlines()
        return "", f"nvidia-smi exited {done.returncode}: {said[-1][:200] if said else 'no output'}"
    if not lines:
        return "", "nvidia-smi lists no GPU"
    return "; ".join(lines), ""


# --- 1. what the run needs -----------------------------------------------------------------------------------------


def nvenc_problem(gpu: str) -> str:
    """"" when ffmpeg lists h264_nvenc and a one-frame test encode works, else why not."""
    from shared.media.hwenc import BY_NAME, test_encode

    try:
        listed = subprocess.run(["ffmpeg", "-hide_banner", "-encoders"], capture_output=True, text=True,
                                timeout=NVIDIA_SMI_TIMEOUT_SEC, check=False).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"ffmpeg not usable: {exc!r}"
    if NVENC not in listed:
        return "this ffmpeg has no h264_nvenc encoder (Debian's ffmpeg has it)"
    failure = test_encode(BY_NAME[NVENC])
    if failure is None:
        return ""
    hint = (" (this GPU has no NVENC engine: NVIDIA's H100/H200/A100-class chips have none)"
            if any(name in gpu for name in NO_NVENC_GPUS) else "")
    return f"the one-frame NVENC test encode failed{hint}: {' '.join(failure.split())[:300]}"


def asr_problem(model: str, cuda: bool = True) -> str:
    """"" when faster-whisper and the model are there (and with `cuda`, CTranslate2 sees a CUDA device), else
    why not."""
    try:
        import ctranslate2
        import faster_whisper  # noqa: F401
    except ImportError as exc:
        return f"{exc.name} is not installed (the project's venv{' with the `gpu` extra' if cuda else ''})"
    if cuda:
        try:
            count = ctranslate2.get_cuda_device_count()
        except RuntimeError as exc:
            return f"ctranslate2 could not query CUDA: {exc}"
        if count < 1:
            return "ctranslate2 sees no CUDA device (a CPU-only CTranslate2, or cuBLAS/cuDNN 9 missing)"
    from shared.asr.models import resolve_model
    from shared.settings import load_settings

    try:
        resolve_model(model, load_settings().asr_models_dir)
    except Exception as exc:  # any failure to find or assemble the model is this precondition's
        return f"speech model {model!r} not found: {exc}"
    return ""


def stack_problems() -> list[str]:
    """What the local stack and the speech media need that is missing (each a line)."""
    from services.stack.devstack import DevStackError, find_binary, find_postgres_bindir, postgres_reachable
    from shared.settings import load_settings

    found: list[str] = []
    for name in ("nats-server", "weed"):
        try:
            find_binary(name)
        except DevStackError as exc:
            found.append(str(exc))
    if not postgres_reachable(load_settings().database_url):
        try:
            find_postgres_bindir()
        except DevStackError as exc:
            found.append(str(exc))
    for tool in ("ffmpeg", "ffprobe", "espeak-ng"):
        if shutil.which(tool) is None:
            found.append(f"{tool} not on PATH (Debian package {'ffmpeg' if tool.startswith('ff') else tool})")
    return found


# --- 2. encoder speed ----------------------------------------------------------------------------------------------


def encode_fps(encoder_name: str, source: Path) -> dict[str, Any]:
    """Re-encode `source`'s video with `encoder_name` (its clipjet arguments) to nowhere: frames per second.

    Same decode and filters for every encoder; the encoder's own upload filters end the chain."""
    from shared.media.hwenc import BY_NAME

    encoder = BY_NAME[encoder_name]
    argv = ["ffmpeg", "-hide_banner", "-nostdin", "-v", "error", "-stats_period", "3600", *encoder.input_args,
            "-i", str(source), "-an", "-vf", ",".join(encoder.upload_filters), "-c:v", encoder.name, *encoder.args,
            "-f", "null", "-"]
    began = time.perf_counter()
    done = subprocess.run([*argv[:5], "-stats", *argv[5:]], capture_output=True, text=True,
                          timeout=FFMPEG_TIMEOUT_SEC, check=False)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise RuntimeError(f"{encoder_name} encode failed: {done.stderr.strip()[-500:]}")
    frames = [int(n) for n in re.findall(r"frame=\s*(\d+)", done.stderr)]
    count = frames[-1] if frames else 0
    return {"encoder": encoder_name, "frames": count, "sec": round(seconds, 3), "fps": round(count / seconds, 1)}


# --- 3. batched ASR ------------------------------------------------------------------------------------------------


def speech_audio(folder: Path, seconds: float) -> Path:
    """The subtitle benchmark's speech (espeak-ng) as 16 kHz mono float32, once."""
    import numpy as np

    from bench.subs import SPEECH_TEXT
    from shared.asr.audio import read_audio
    from shared.media.speech import make_speech_video

    target = folder / f"speech-{seconds:g}s.f32"
    if not target.is_file():
        sentences = SPEECH_TEXT if seconds >= 45 else SPEECH_TEXT[:2]
        video = make_speech_video(folder / f"speech-{seconds:g}s.mp4", sentences, offset_sec=1.0, gap_sec=1.0,
                                  seconds=seconds, size="320x180")
        audio = asyncio.run(read_audio(str(video.path), start_sec=0.0, duration_sec=seconds))
        np.asarray(audio, dtype=np.float32).tofile(target)
    return target


def asr_settings(model: str, device: str, batch: int, **more: Any) -> Any:
    from shared.settings import load_settings

    return load_settings({}, asr_model=model, asr_device=device, asr_gpu_batch=batch, asr_beam_size=1, **more)


async def transcribe_at_once(engine: Any, audio: Any, clips: int) -> tuple[float, list[Any]]:
    """`clips` copies of `audio` transcribed concurrently (as many jobs would): wall seconds and transcripts."""
    began = time.perf_counter()
    transcripts = await asyncio.gather(*(engine.transcribe(audio, "en") for _ in range(clips)))
    return time.perf_counter() - began, list(transcripts)


def asr_x_real_time(audio_path: Path, model: str, device: str, batch: int, clips: int) -> dict[str, Any]:
    """Audio seconds per second of transcription with ASR_GPU_BATCH=`batch`, after one warm-up clip."""
    import numpy as np

    from shared.asr.audio import SAMPLE_RATE_HZ
    from shared.asr.resource import engine_for

    audio = np.fromfile(audio_path, dtype=np.float32)
    audio_sec = len(audio) / SAMPLE_RATE_HZ
    began = time.perf_counter()
    engine = engine_for(asr_settings(model, device, batch))
    load_sec = time.perf_counter() - began

    async def run() -> tuple[float, list[Any]]:
        await engine.transcribe(audio, "en")  # warm-up: kernels, the VAD, the allocator's first blocks
        return await transcribe_at_once(engine, audio, clips)

    seconds, transcripts = asyncio.run(run())
    words = sorted({len(t.words) for t in transcripts})
    if not words or words[0] == 0:
        raise RuntimeError(f"a clip came back without words (words per clip: {words})")
    return {"batch": batch, "device": engine.device, "devices_used": sorted({t.device for t in transcripts}),
            "clips": clips, "audio_sec": round(clips * audio_sec, 1), "sec": round(seconds, 2),
            "x_real_time": round(clips * audio_sec / seconds, 1), "words_per_clip": words,
            "load_sec": round(load_sec, 2)}


# --- 4. out of memory ----------------------------------------------------------------------------------------------


class GpuMemoryHog:
    """Takes GPU memory through the CUDA driver API (libcuda, no framework) until `leave_mb` is left free."""

    def __init__(self) -> None:
        self.cuda = ctypes.CDLL("libcuda.so.1")
        self.blocks: list[ctypes.c_uint64] = []
        self.taken = 0  # bytes
        self._check(self.cuda.cuInit(0), "cuInit")
        device, context = ctypes.c_int(), ctypes.c_void_p()
        self._check(self.cuda.cuDeviceGet(ctypes.byref(device), 0), "cuDeviceGet")
        self._check(self.cuda.cuDevicePrimaryCtxRetain(ctypes.byref(context), device), "cuDevicePrimaryCtxRetain")
        self._check(self.cuda.cuCtxSetCurrent(context), "cuCtxSetCurrent")

    @staticmethod
    def _check(code: int, call: str) -> None:
        if code != 0:
            raise RuntimeError(f"{call} failed with CUDA error {code}")

    def free_mb(self) -> float:
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        self._check(self.cuda.cuMemGetInfo_v2(ctypes.byref(free), ctypes.byref(total)), "cuMemGetInfo")
        return free.value / MB

    def take(self, leave_mb: float) -> float:
        """Allocate blocks (1 GiB, halving down to 1 MiB) while more than `leave_mb` stays free; MB taken."""
        chunk = 1 << 30
        while chunk >= MB:
            block = ctypes.c_uint64()
            if self.free_mb() - chunk / MB < leave_mb or self.cuda.cuMemAlloc_v2(
                    ctypes.byref(block), ctypes.c_size_t(chunk)) != 0:
                chunk //= 2
                continue
            self.blocks.append(block)
            self.taken += chunk
        return self.taken / MB

    def release(self) -> None:
        while self.blocks:
            self.cuda.cuMemFree_v2(self.blocks.pop())
        self.taken = 0


def oom_child(audio_path: Path, model: str, batch: int, leave_mb: float, clips: int) -> dict[str, Any]:
    """In this (fresh) process: the engine on CUDA, the GPU filled but `leave_mb`, `clips` clips at once."""
    import numpy as np
    from structlog.testing import capture_logs

    from shared.asr.resource import engine_for

    audio = np.fromfile(audio_path, dtype=np.float32)
    engine = engine_for(asr_settings(model, "cuda", batch))
    hog = GpuMemoryHog()
    free_before = hog.free_mb()
    hog.take(leave_mb)
    free_during = hog.free_mb()
    try:
        with capture_logs() as logs:
            seconds, transcripts = asyncio.run(transcribe_at_once(engine, audio, clips))
    finally:
        hog.release()
    failed = [int(e["batch"]) for e in logs if e.get("event") == "asr_gpu_oom"]
    return {"asked_batch": batch, "free_mb_before": round(free_before), "free_mb_during": round(free_during),
            "failed_batches": failed, "devices_used": sorted({t.device for t in transcripts}),
            "words_per_clip": sorted({len(t.words) for t in transcripts}), "sec": round(seconds, 2)}


def oom_fallback(audio_path: Path, model: str) -> dict[str, Any]:
    """oom_child in a child process (its CUDA memory and CTranslate2's cache are its own); its figures."""
    argv = [sys.executable, "-m", "bench.gpu_check", "--oom-child", str(audio_path), "--model", model]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=CHILD_TIMEOUT_SEC, check=False, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"the out-of-memory child exited {done.returncode}: {done.stderr.strip()[-800:]}")
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    failed = figures["failed_batches"]
    if not failed:
        raise RuntimeError(f"no out-of-memory happened (nothing to fall back from): {figures}")
    if failed != [OOM_BATCH >> i for i in range(len(failed))]:
        raise RuntimeError(f"the batch was not halved on each out-of-memory: {figures}")
    if 0 in figures["words_per_clip"]:
        raise RuntimeError(f"a clip came back without words after the fallback: {figures}")
    return figures


# --- 5. the stack --------------------------------------------------------------------------------------------------


def seen_in(lines: Any, event: str) -> dict[str, Any] | None:
    """The last JSON log line of `event` among a child's last lines, or None."""
    for line in reversed(list(lines)):
        start = line.find("{")
        if start >= 0 and f'"{event}"' in line:
            with contextlib.suppress(ValueError):
                found: dict[str, Any] = json.loads(line[start:])
                return found
    return None


async def stack_jobs(work: Path, source: Path, encoder: str, device: str, model: str) -> dict[str, Any]:
    """The stack with `encoder` and ASR on `device`: a re-encode job, then a subtitles job burned in."""
    import httpx

    from bench.copy_path import JobRunner, upload_source
    from bench.stack import bench_stack

    with bench_stack(work / "stack", video_encoder=encoder, asr_device=device, asr_model=model, asr_beam_size=1,
                     force_cut_path="reencode", log_level="info") as stack:
        await upload_source(stack, source)
        async with JobRunner(stack) as runner, httpx.AsyncClient(base_url=stack.base_url) as http:
            figures: dict[str, Any] = {}
            for name, extra in (("reencode_job", {}), ("subtitles_job", {"subs": {"enabled": True, "burnIn": True}})):
                job_id, seconds = await runner.run_job(1.3, 11.3, "fast", **extra)
                view = (await http.get(f"/api/jobs/{job_id}")).json()
                result = view["result"]
                figures[name] = {"post_to_done_sec": round(seconds, 2), "cut_path": result.get("cutPath", "copy"),
                                 "subtitles": result.get("subtitles")}
                if result.get("cutPath") != "reencode":
                    raise RuntimeError(f"{name} was not re-encoded: {result}")
            words = (await http.get(view["urls"]["words"])).json()
            if not words:
                raise RuntimeError("the subtitles job found no words")
            figures["subtitles_job"]["words"] = len(words)
        tails = {child.name: list(child.tail) for child in stack.children}
    picked = seen_in(tails.get("encode", []), "video_encoder_selected")
    batch = seen_in(tails.get("transcribe", []), "asr_batch")
    figures["encoder_process"] = picked.get("encoder") if picked else "(its choice was not in its last lines)"
    figures["transcriber_batched_on_gpu"] = batch is not None
    if figures["encoder_process"] != encoder:
        raise RuntimeError(f"the encoder process did not use {encoder}: {figures}")
    if device == "cuda" and batch is None:
        raise RuntimeError(f"the transcriber logged no GPU batch (asr_batch): {figures}")
    return figures


# --- the run -------------------------------------------------------------------------------------------------------


def attempt(report: Report, part: str, run: Callable[[], Any]) -> Any:
    try:
        figures = run()
    except Exception as exc:  # each part reports its own failure; the others still run
        report.fail(part, f"{type(exc).__name__}: {exc}")
        return None
    report.add(part, figures)
    return figures


def check(work: Path, cpu: bool) -> Report:
    from shared.media.testpattern import make_test_pattern

    sizes = CPU_SIZES if cpu else Sizes()
    report = Report()
    report.gpu = "(none: --cpu)" if cpu else nvidia_gpu()[0]
    print(f"GPU: {report.gpu}", flush=True)
    nvenc_missing = "" if cpu else nvenc_problem(report.gpu)
    asr_missing = asr_problem(sizes.model, cuda=not cpu)
    missing_stack = stack_problems()
    for part, problem in (("nvenc", nvenc_missing), ("cuda_asr", asr_missing)):
        if problem:
            report.fail(part, problem)
    for problem in missing_stack:
        report.fail("precondition", problem)
    if any("ffmpeg" in p or "espeak" in p for p in missing_stack):
        return report  # no media can be made
    encoder = "libx264" if cpu or nvenc_missing else NVENC
    device = "cpu" if cpu else "cuda"
    source = make_test_pattern(work / f"encode-{sizes.encode_size}.mp4", seconds=sizes.encode_seconds,
                               size=sizes.encode_size, fps=30, gop_frames=60)
    speeds = attempt(report, "libx264_fps", lambda: encode_fps("libx264", source))
    if encoder == NVENC:
        nvenc = attempt(report, "nvenc_fps", lambda: encode_fps(NVENC, source))
        if nvenc and speeds:
            report.add("nvenc_over_libx264", round(nvenc["fps"] / speeds["fps"], 2))
    if not asr_missing:
        audio = speech_audio(work, sizes.speech_seconds)
        for batch in sizes.batches:
            attempt(report, f"asr_batch_{batch}",
                    lambda b=batch: asr_x_real_time(audio, sizes.model, device, b, sizes.asr_clips))
        if not cpu:
            attempt(report, "oom_fallback", lambda: oom_fallback(audio, sizes.model))
    if not missing_stack and not asr_missing:
        from shared.media.speech import make_speech_video
        from tests.speech import SPEECH_SENTENCES

        clip = make_speech_video(work / "stack-source.mp4", SPEECH_SENTENCES, offset_sec=2.0, gap_sec=1.0,
                                 seconds=14.0, size="1280x720" if not cpu else "320x180")
        attempt(report, "stack", lambda: asyncio.run(stack_jobs(work, clip.path, encoder, device, sizes.model)))
    return report


@contextlib.contextmanager
def work_dir(given: Path | None) -> Iterator[Path]:
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        yield given
        return
    base = ROOT / ".data" / "bench"
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=base, prefix="gpu-check-") as work:
        yield Path(work)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="the same steps with libx264 and CPU ASR (a dry run)")
    parser.add_argument("--work", type=Path, help="folder for the media and the stack's data (default: a temporary "
                        "one under .data/bench)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--model", default="base", help=argparse.SUPPRESS)
    parser.add_argument("--oom-child", type=Path, metavar="AUDIO", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.oom_child:
        print(json.dumps(oom_child(args.oom_child, args.model, OOM_BATCH, OOM_LEAVE_MB, OOM_CLIPS)), flush=True)
        return 0
    if not args.cpu:
        gpu, why = nvidia_gpu()
        if not gpu:
            print(f"SKIPPED: no NVIDIA GPU ({why})", flush=True)
            return 0
    began = time.perf_counter()
    with work_dir(args.work) as work:
        report = check(work, args.cpu)
    summary = {"gpu": report.gpu, "parts": report.parts, "problems": report.problems,
               "sec": round(time.perf_counter() - began, 1)}
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2), flush=True)
    print("PASSED" if not report.problems else f"FAILED: {len(report.problems)} problem(s)", flush=True)
    return 0 if not report.problems else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())

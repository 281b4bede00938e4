"""Which H.264 encoder this node uses: a hardware one when present and working, else libx264.

Detection runs once per process at start-up: each candidate gets a one-frame test encode, and the first
that succeeds is used. A hardware encoder whose device, driver or library is missing fails that encode
cleanly (non-zero exit), and detection moves on; libx264 is the last candidate and always present in the
ffmpeg clipjet needs.
"""

from __future__ import annotations

import functools
import subprocess
from dataclasses import dataclass

from shared.runtime.logs import get_logger

log = get_logger("hwenc")

AUTO = "auto"
LIBX264 = "libx264"
TEST_ENCODE_TIMEOUT_SEC = 20.0  # one frame; a driver that hangs longer than this counts as absent
TEST_FRAME = "color=c=gray:size=256x144:rate=25:duration=0.04"  # one small frame (lavfi)
VAAPI_DEVICE = "/dev/dri/renderD128"  # the first DRM render node
STDERR_TAIL_CHARS = 300


@dataclass(frozen=True)
class VideoEncoder:
    """An ffmpeg H.264 encoder with the arguments it needs around it.

    `input_args` go before the first `-i` (device set-up), `upload_filters` end the video filter chain
    (moving frames to the device), `args` follow `-c:v <name>` (preset and quality).
    """

    name: str
    args: tuple[str, ...]
    input_args: tuple[str, ...] = ()
    upload_filters: tuple[str, ...] = ("format=yuv420p",)
    hardware: bool = True
    threaded: bool = False  # takes `-threads:v` (software encoders share the node's cores)


CANDIDATES: tuple[VideoEncoder, ...] = (
    VideoEncoder("h264_nvenc", ("-preset", "p1", "-cq", "23")),
    VideoEncoder(
        "h264_vaapi", ("-qp", "23"), input_args=("-vaapi_device", VAAPI_DEVICE),
        upload_filters=("format=nv12", "hwupload"),
    ),
    VideoEncoder(
        "h264_qsv", ("-preset", "veryfast", "-global_quality", "23"),
        input_args=("-init_hw_device", "qsv=hw", "-filter_hw_device", "hw"),
        upload_filters=("format=nv12", "hwupload=extra_hw_frames=64"),
    ),
    VideoEncoder(LIBX264, ("-preset", "veryfast", "-crf", "23"), hardware=False, threaded=True),
)
BY_NAME = {c.name: c for c in CANDIDATES}
SOFTWARE = BY_NAME[LIBX264]


def test_encode(encoder: VideoEncoder) -> str | None:
    """Encode one frame with `encoder` to nowhere; None when it worked, else why it did not."""
    filters = ",".join(encoder.upload_filters)
    cmd = [
        "ffmpeg", "-hide_banner", "-nostdin", "-v", "error", *encoder.input_args, "-f", "lavfi", "-i", TEST_FRAME,
        "-frames:v", "1", "-vf", filters, "-c:v", encoder.name, *encoder.args, "-f", "null", "-",
    ]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=TEST_ENCODE_TIMEOUT_SEC, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return repr(exc)
    if done.returncode != 0:
        return done.stderr.strip()[-STDERR_TAIL_CHARS:] or f"exit {done.returncode}"
    return None


@functools.cache
def detect_video_encoder(preference: str = AUTO) -> VideoEncoder:
    """The encoder to use: `preference` (an encoder name) when it works, else the first working candidate.

    `auto` tries NVENC, VAAPI, QSV, then libx264. Cached: the test encodes run once per process.
    """
    wanted = BY_NAME.get(preference)
    if preference != AUTO and wanted is None:
        log.warning("video_encoder_unknown", wanted=preference, known=sorted(BY_NAME))
    order = (wanted,) if wanted is not None else CANDIDATES
    for candidate in (*order, SOFTWARE):
        failure = test_encode(candidate)
        if failure is None:
            log.info("video_encoder_selected", encoder=candidate.name, hardware=candidate.hardware,
                     wanted=preference)
            return candidate
        log.info("video_encoder_unavailable", encoder=candidate.name, reason=failure)
    raise RuntimeError("no H.264 encoder works, not even libx264: install an ffmpeg built with libx264")

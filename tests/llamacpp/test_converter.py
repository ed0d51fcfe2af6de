"""The converting process: llama.cpp's converter runs in one process of its own, kept for the caller's lifetime
(imports paid once), restarted when it dies, and its refusals come back as one-line UserErrors."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from autoslm.llamacpp import converter, export_gguf
from autoslm.models import resolve

pytest.importorskip("llama_cpp")


def test_one_process_serves_every_export_and_a_dead_one_is_replaced(tmp_path: Path) -> None:
    source = resolve("tiny-llama")
    export_gguf(source, tmp_path / "a.gguf")
    first = converter._PROC
    assert first is not None and first.poll() is None
    export_gguf(source, tmp_path / "b.gguf")
    assert converter._PROC is first  # the same process
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    export_gguf(source, tmp_path / "c.gguf")  # a new one takes over
    assert converter._PROC is not first and converter._PROC.poll() is None
    digests = {(tmp_path / n).read_bytes() for n in ("a.gguf", "b.gguf", "c.gguf")}
    assert len(digests) == 1
    converter.stop()
    assert converter._PROC is None

"""The caller's side of the converting process (driver.py): started on the first export, kept for this process's
lifetime (torch, transformers and llama.cpp's converter are imported there once: a few seconds per export saved),
restarted if it dies, and ended with this process."""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from autoslm.errors import UserError
from autoslm.llamacpp.driver import REPLY
from autoslm.llamacpp.source import converter_root

_LOCK = threading.Lock()
_PROC: subprocess.Popen[str] | None = None
_LOG: Any = None


def convert(directory: Path, dest: Path, dtype: str, extras: dict[str, Any]) -> None:
    """One conversion in the converting process; its refusal (an unknown tokenizer, a missing file) is a UserError
    in one line, any other failure a RuntimeError carrying the converter's traceback."""
    request = {"directory": str(directory), "dest": str(dest), "dtype": dtype, "extras": extras}
    with _LOCK:
        reply = _ask(request)
    if reply.get("ok"):
        return
    if reply.get("user"):
        raise UserError(f"checkpoint '{directory}': llama.cpp's converter refused it: {reply['error']}")
    raise RuntimeError(f"llama.cpp's converter failed on '{directory}': {reply['error']}\n{reply.get('trace', '')}")


def _ask(request: dict[str, Any]) -> dict[str, Any]:
    global _PROC
    if _PROC is None or _PROC.poll() is not None:
        _PROC = _start()
    assert _PROC.stdin is not None
    try:
        _PROC.stdin.write(json.dumps(request) + "\n")
        _PROC.stdin.flush()
    except (BrokenPipeError, OSError):
        pass  # it died: read what it said
    reply = _read_reply(_PROC)
    if reply is None:
        _PROC = None
        raise RuntimeError(f"llama.cpp's converter process ended unexpectedly: {_stderr_tail()}")
    return reply


def _start() -> subprocess.Popen[str]:
    global _LOG
    from autoslm.targets.local import die_with_parent

    _LOG = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (the process's stderr, for its lifetime)
    env = {**os.environ, "NO_LOCAL_GGUF": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "autoslm.llamacpp.driver", str(converter_root())],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=_LOG, text=True, env=env, preexec_fn=die_with_parent,
    )  # fmt: skip
    ready = _read_reply(proc)
    if not ready:
        raise RuntimeError(f"llama.cpp's converter process did not start: {_stderr_tail()}")
    atexit.register(_stop, proc)
    return proc


def _read_reply(proc: subprocess.Popen[str]) -> dict[str, Any] | None:
    assert proc.stdout is not None
    for line in proc.stdout:  # the converter may print lines of its own
        if line.startswith(REPLY):
            return json.loads(line[len(REPLY) :])
    return None


def _stderr_tail() -> str:
    if _LOG is None:
        return ""
    _LOG.seek(0)
    return "\n".join(_LOG.read().strip().splitlines()[-15:])


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()


def stop() -> None:
    """End the converting process now (it is started again on the next export)."""
    global _PROC
    with _LOCK:
        if _PROC is not None:
            _stop(_PROC)
            _PROC = None

"""This machine's CPU as a target: each measurement loads the checkpoint in a fresh Python process.

A fresh process gives an honest memory figure (nothing else resident, nothing shared with the search) and keeps
one candidate's threads and caches from disturbing the next. It is `python -m autoslm.targets.worker`, or, for a
runtime that names modules to preload (torch), a child of a fork server that imported them once (`forkserver.py`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from autoslm.errors import UserError
from autoslm.targets import (
    DECODE_CONTEXT,
    Measurement,
    MeasureSettings,
    PairMeasurement,
    Target,
    checkpoint_dir,
    forkserver,
)


def die_with_parent() -> None:
    """In a child, before exec: ask Linux to kill it when its parent dies (`kill -9` of a search or of the agent
    must not leave measuring processes behind). Elsewhere a no-op."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class MeasurementError(RuntimeError):
    """The measuring process failed (crash, out of memory, timeout); the message carries its last output."""


FLOOR_S = 600.0  # no measurement is killed sooner
SECONDS_PER_GB_RUN = 60.0
"""The ceiling allowed for one timed run (32 decoded tokens and a 128-token prefill) per GB of weights. Quiet, this
machine takes about 1 s (SmolLM2-135M, 0.54 GB in F32: 0.6 s in llama.cpp); a busy machine and bf16 in torch are
several times slower: the ceiling leaves a margin of ~50x, and only a hung process reaches it."""


def timeout_for(settings: MeasureSettings, sizes_mb: list[float], rounds: int = 0) -> float:
    """How long a measurement may take: `settings.timeout_s` when given; otherwise FLOOR_S, or more where the
    runs it makes (warm-up and repeats; for a pair, `rounds` rounds of both models) need it at SECONDS_PER_GB_RUN.
    A fixed 600 s killed the paired timing of a 0.5B bf16 model on a busy machine (a failed trial, then "no feasible
    policy")."""
    if settings.timeout_s:
        return settings.timeout_s
    runs = settings.warmup + settings.repeats * max(1, rounds)
    # one run as a share of the default run (32 tokens decoded after 16, a 128-token prefill); prompts cost ~1/8 of
    # a decoded token each
    tokens = (settings.decode_tokens + (settings.prompt_tokens + settings.context - DECODE_CONTEXT) / 8) / 48
    need = sum(runs * SECONDS_PER_GB_RUN * tokens * size / 1024 for size in sizes_mb)
    return max(FLOOR_S, 120.0 + need)


class LocalTarget(Target):
    schemes = ("local",)
    kind = "local"
    help = "this machine's CPU, a fresh process per measurement"

    def __init__(self, timeout_s: float | None = None) -> None:
        self.timeout_s = timeout_s  # a hard cap over any measurement's own limit (the agent's --timeout-s)
        self._fingerprint: dict[str, str | int] | None = None

    def fingerprint(self) -> dict[str, str | int]:
        if self._fingerprint is None:
            from autoslm.targets.measure import machine_fingerprint

            self._fingerprint = machine_fingerprint(MeasureSettings().threads)
        return self._fingerprint

    def measure(self, checkpoint: Path, settings: MeasureSettings | None = None) -> Measurement:
        settings = settings or MeasureSettings()
        directory = checkpoint_dir(checkpoint)
        result = self._run_worker([str(directory), settings.model_dump_json()], settings, [directory])
        return Measurement.model_validate(result)

    def measure_pair(
        self, candidate: Path, baseline: Path, rounds: int, settings: MeasureSettings | None = None
    ) -> PairMeasurement:
        """Both checkpoints loaded in one fresh process and timed alternately (`measure.measure_pair`)."""
        settings = settings or MeasureSettings()
        both = [checkpoint_dir(candidate), checkpoint_dir(baseline)]
        args = ["--pair", *map(str, both), str(rounds), settings.model_dump_json()]
        return PairMeasurement.model_validate(self._run_worker(args, settings, both, rounds))

    def limit_s(self, settings: MeasureSettings, directories: list[Path], rounds: int = 0) -> float:
        """The measurement's time limit: `timeout_for`; on a target with a cap (an agent's --timeout-s), the cap, or
        less where the settings ask for less."""
        from autoslm import checkpoint

        if self.timeout_s:
            return min(settings.timeout_s or self.timeout_s, self.timeout_s)
        return timeout_for(settings, [checkpoint.weights_size_mb(d) for d in directories], rounds)

    def _run_worker(self, args: list[str], settings: MeasureSettings, directories: list[Path], rounds: int = 0) -> dict:
        from autoslm.runtimes import get_runtime

        timeout_s = self.limit_s(settings, directories, rounds)
        preload = get_runtime(settings.runtime).preload(directories[0])
        if preload:
            code, output = forkserver.run(args, preload, timeout_s)
        else:
            code, output = _subprocess(args, settings, timeout_s)
        if code is None:
            how = "its limit" if settings.timeout_s else "scaled to the model; raise it with --measure-timeout"
            raise MeasurementError(f"measurement timed out after {round(timeout_s, 1):g}s ({how})")
        for line in output.splitlines():
            if line.startswith("AUTOSLM-RESULT "):
                return json.loads(line.split(" ", 1)[1])
        tail = output.strip().splitlines()[-1:] or ["no output"]
        refused = tail[0].removeprefix(f"{UserError.__module__}.{UserError.__name__}: ")
        if refused != tail[0]:  # the checkpoint or the settings, refused in words by the measuring process
            raise MeasurementError(refused)
        reason = "killed (out of memory?)" if code in (-9, 137) else f"exit {code}"
        raise MeasurementError(f"measurement process failed ({reason}): {tail[0]}")


def _subprocess(args: list[str], settings: MeasureSettings, timeout_s: float) -> tuple[int | None, str]:
    """`python -m autoslm.targets.worker ARGS`: (exit code, stdout then stderr); None: killed at `timeout_s`."""
    env = {**os.environ, "OMP_NUM_THREADS": str(settings.threads), "MKL_NUM_THREADS": str(settings.threads)}
    cmd = [sys.executable, "-m", "autoslm.targets.worker", *args]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout_s, env=env, preexec_fn=die_with_parent
        )
    except subprocess.TimeoutExpired:
        return None, ""
    return proc.returncode, proc.stdout + "\n" + proc.stderr

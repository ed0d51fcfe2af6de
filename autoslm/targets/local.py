"""This machine's CPU as a target: each measurement loads the checkpoint in a fresh Python process.

A fresh process gives an honest memory figure (nothing else resident, nothing shared with the search) and keeps
one candidate's threads and caches from disturbing the next.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from autoslm.targets import Measurement, MeasureSettings, PairMeasurement, Target, checkpoint_dir


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


class LocalTarget(Target):
    schemes = ("local",)
    kind = "local"
    help = "this machine's CPU, a fresh process per measurement"

    def __init__(self, timeout_s: float = 600.0) -> None:
        self.timeout_s = timeout_s
        self._fingerprint: dict[str, str | int] | None = None

    def fingerprint(self) -> dict[str, str | int]:
        if self._fingerprint is None:
            from autoslm.targets.measure import machine_fingerprint

            self._fingerprint = machine_fingerprint(MeasureSettings().threads)
        return self._fingerprint

    def measure(self, checkpoint: Path, settings: MeasureSettings | None = None) -> Measurement:
        settings = settings or MeasureSettings()
        result = self._run_worker([str(checkpoint_dir(checkpoint)), settings.model_dump_json()], settings)
        return Measurement.model_validate(result)

    def measure_pair(
        self, candidate: Path, baseline: Path, rounds: int, settings: MeasureSettings | None = None
    ) -> PairMeasurement:
        """Both checkpoints loaded in one fresh process and timed alternately (`measure.measure_pair`)."""
        settings = settings or MeasureSettings()
        args = ["--pair", str(checkpoint_dir(candidate)), str(checkpoint_dir(baseline)), str(rounds)]
        return PairMeasurement.model_validate(self._run_worker([*args, settings.model_dump_json()], settings))

    def _run_worker(self, args: list[str], settings: MeasureSettings) -> dict:
        env = {
            **os.environ,
            "OMP_NUM_THREADS": str(settings.threads),
            "MKL_NUM_THREADS": str(settings.threads),
        }
        cmd = [sys.executable, "-m", "autoslm.targets.worker", *args]
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=self.timeout_s, env=env, preexec_fn=die_with_parent
            )
        except subprocess.TimeoutExpired as exc:
            raise MeasurementError(f"measurement timed out after {self.timeout_s:.0f}s") from exc
        for line in proc.stdout.splitlines():
            if line.startswith("AUTOSLM-RESULT "):
                return json.loads(line.split(" ", 1)[1])
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        reason = "killed (out of memory?)" if proc.returncode in (-9, 137) else f"exit {proc.returncode}"
        raise MeasurementError(f"measurement process failed ({reason}): {tail[0]}")

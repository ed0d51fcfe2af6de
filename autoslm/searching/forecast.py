"""What a search will cost, said before the work: time from the measured baseline, memory from the processes.

Two moments:
- before anything is loaded (`refuse_if_it_cannot_fit`): the model's fp32 size from its weight files' headers, times
  the copies a search holds, against the memory available now. A model that cannot fit stops the search in one line.
- after the baseline (`after_baseline`): the baseline went through every phase a trial does (apply, save or export,
  measure, low and full evaluation), so a trial costs about what it cost; memory is this process's peak so far plus
  the measuring process's (its fixed start, measured once below, plus the model in use as measured), or the larger
  of the two where the search holds no model while measuring (llama.cpp's quantization: `after_baseline`). The line
  `30 trials: about 24 min (~45 s per trial, as the baseline took); peak memory about 3.1 GB of 24 GB` is printed,
  stored in the study, and compared with the real duration at the end. In llama.cpp it is an upper bound: the
  baseline evaluates the F32 model, slower than a quantized candidate (+30% to +71% on mixed-precision searches,
  270M to 3B).
- after the first trial (`revised_line`, from the runner): the same at that trial's pace, also compared at the end.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from autoslm.errors import UserError

# resident memory of measuring before a model is loaded (this machine, Python 3.11, 2026-12-03): the llama.cpp
# runtime's process imports llama.cpp alone; the torch runtime's fork server holds torch, transformers and the
# modeling module (353 MB; its measuring children share those pages, targets/forkserver.py)
WORKER_START_MB = {"llama.cpp": 59.0, "torch": 353.0}
# fp32 copies of the model a search holds at its peak, before anything is measured: the base, a trial's private
# copy, and the measuring process's (docs/benchmarks.md: 5.3x the model for SmolLM2 in llama.cpp, issue #32)
COPIES_BEFORE = 3.0
# the same for a search that never loads the model into torch (llama.cpp quantization alone): the F32 GGUF, memory
# mapped (its pages shared by the search and the measuring process), and a quantized candidate or two
COPIES_FILES_ONLY = 1.5
BYTES_PER_DTYPE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def meminfo_mb(field: str) -> float | None:
    """A /proc/meminfo figure in MB (None where there is none)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def parameters_in(directory: Path) -> int:
    """Weights in a model directory's safetensors files, read from their headers (nothing is loaded); 0 where they
    cannot be read (the check is then skipped: loading the model says what is wrong)."""
    from autoslm.models import stored_parameters

    try:
        return stored_parameters(directory)
    except (UserError, OSError):
        return 0


def refuse_if_it_cannot_fit(directory: Path, spec: str, files_only: bool = False) -> None:
    """Stop before any work when the fp32 copies of the model a search holds (COPIES_BEFORE, or COPIES_FILES_ONLY
    for one that never loads it into torch) exceed the memory available now."""
    params = parameters_in(directory)
    available = meminfo_mb("MemAvailable")
    if not params or available is None:
        return
    copies = COPIES_FILES_ONLY if files_only else COPIES_BEFORE
    need = copies * params * 4 / 2**20
    if need > available:
        raise UserError(
            f"--model {spec}: {params / 1e9:.2f}B parameters; a search holds about {copies:g} fp32 copies "
            f"({need / 1024:.1f} GB) and {available / 1024:.1f} GB are available now: free memory or use a machine "
            "with more"
        )


@dataclass
class Forecast:
    trials: int
    per_trial_s: float
    total_s: float
    peak_mb: float
    memory_mb: float | None
    timeout_s: float | None = None

    def line(self) -> str:
        total = duration(self.total_s)
        of = f" of {self.memory_mb / 1024:.0f} GB" if self.memory_mb else ""
        text = (
            f"forecast: {self.trials} trials, about {total} (~{self.per_trial_s:.0f} s per trial, as the baseline "
            f"took); peak memory about {self.peak_mb / 1024:.1f} GB{of}"
        )
        if self.timeout_s and self.total_s > self.timeout_s:
            fit = max(0, int(self.timeout_s // max(self.per_trial_s, 1e-9)))
            text += f"; --timeout {self.timeout_s:g} s leaves time for about {fit} of them"
        return text

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def after_baseline(
    baseline: dict[str, Any], trials: int, runtime: str, timeout_s: float | None = None, files_only: bool = False
) -> Forecast | None:
    """The forecast from a baseline measured in this study (None for one stored without its phases' seconds).

    Memory: a search that works from the model's files (`files_only`: llama.cpp's quantization) holds no model while
    the measuring process runs (each evaluation maps its file and lets it go), so its peak is the larger of this
    process's peak so far and its resting size plus the measuring process. Otherwise this process keeps its models
    while a trial is measured: the sum (an upper bound)."""
    from autoslm.targets.measure import peak_rss_mb, rss_mb

    seconds = baseline.get("seconds") or {}
    if not seconds:
        return None
    per_trial = float(sum(seconds.values()))
    worker = WORKER_START_MB.get(runtime, WORKER_START_MB["torch"]) + float(baseline["metrics"].get("memory_mb", 0))
    peak = max(peak_rss_mb(), rss_mb() + worker) if files_only else peak_rss_mb() + worker
    return Forecast(
        trials=trials,
        per_trial_s=per_trial,
        total_s=per_trial * trials,
        peak_mb=peak,
        memory_mb=meminfo_mb("MemTotal"),
        timeout_s=timeout_s,
    )


def duration(seconds: float) -> str:
    """'45 s', '24 min', '2.3 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def against(forecast: dict[str, Any], took_s: float) -> str:
    """'took 23 min; the forecast said 24 min (+4%)', and what it said after the first trial where it was revised:
    '..., after the first trial 22 min (-4%)'."""

    def error(said: float) -> str:
        return f"{(said - took_s) / took_s * 100 if took_s else 0.0:+.0f}%"

    said = float(forecast["total_s"])
    text = f"took {duration(took_s)}; the forecast said {duration(said)} ({error(said)})"
    revised = forecast.get("after_first_s")
    if revised:
        text += f", after the first trial {duration(float(revised))} ({error(float(revised))})"
    return text


def revised_line(total_s: float, per_trial_s: float) -> str:
    """The forecast again after the first trial, at its pace: the baseline prices a trial like the unquantized model
    (slower to evaluate than a quantized one, and never pruned), so the first forecast is an upper bound."""
    return f"forecast after the first trial: about {duration(total_s)} in all (it took {per_trial_s:.0f} s)"


__all__ = [
    "Forecast",
    "after_baseline",
    "against",
    "duration",
    "parameters_in",
    "refuse_if_it_cannot_fit",
    "revised_line",
]

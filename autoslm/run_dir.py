"""A search's run directory (`--out`): every file and folder it keeps, named once.

RUN/
  study.db                    the Optuna study (SQLite; absent where --storage names a shared one)
  trials.json                 every trial's record, rewritten after each
  baseline.json               the baseline's record (metrics, timings, references' figures)
  baseline/                   the baseline's checkpoint, kept where close calls re-measure against it
  reference-topk.safetensors  the baseline's top-k next-token distribution (KL divergence's reference)
  references/NAME/            a budget's named reference (a preset such as Q4_K_M), measured once
  trials/NNNN/                a trial's checkpoint while it is the best or still running (trials/baseline,
                              trials/reference-NAME: those measurements' own, until kept or removed)
  logs/trial-NNNN.txt         a failed trial's traceback (trial-baseline.txt, ...)
  sensitivity/                per-tensor sensitivity tables (sensitivity.png: the report's heat map)
  workers/                    Ray workers' own folders
  ray/                        Ray Tune's storage
  checkpoint/, recipe.yaml    the exported best policy
  report.html                 `autoslm report`'s page (written here by default)
  .autoslm.lock               held while a process searches here
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunDir:
    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def study_db(self) -> Path:
        return self.path / "study.db"

    @property
    def trials_json(self) -> Path:
        return self.path / "trials.json"

    @property
    def baseline_json(self) -> Path:
        return self.path / "baseline.json"

    @property
    def baseline(self) -> Path:
        return self.path / "baseline"

    @property
    def reference_topk(self) -> Path:
        return self.path / "reference-topk.safetensors"

    def reference(self, name: str) -> Path:
        return self.path / "references" / name

    @property
    def trials(self) -> Path:
        return self.path / "trials"

    def trial(self, number: int | str) -> Path:
        """A trial's work folder; a name for the measurements that are no Optuna trial (the baseline, a reference)."""
        return self.trials / _name(number)

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    def trial_log(self, number: int | str) -> Path:
        return self.logs / f"trial-{_name(number)}.txt"

    @property
    def sensitivity(self) -> Path:
        return self.path / "sensitivity"

    @property
    def sensitivity_png(self) -> Path:
        return self.path / "sensitivity.png"

    @property
    def workers(self) -> Path:
        return self.path / "workers"

    @property
    def ray(self) -> Path:
        return self.path / "ray"

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint"

    @property
    def recipe(self) -> Path:
        return self.path / "recipe.yaml"

    @property
    def report(self) -> Path:
        return self.path / "report.html"

    @property
    def lock(self) -> Path:
        return self.path / ".autoslm.lock"

    def outputs(self) -> list[str]:
        """The names of what a finished search writes that are here (a folder holding them holds a search)."""
        kept = (self.trials_json, self.recipe, self.checkpoint, self.baseline_json, self.report)
        return [p.name for p in kept if p.exists()]


def _name(number: int | str) -> str:
    return f"{number:04d}" if isinstance(number, int) else number


__all__ = ["RunDir"]

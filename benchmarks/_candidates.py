"""Shared by the benchmarks: build a compressed checkpoint from a list of steps; share one baseline between studies."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any


def build(model: str, steps: list[dict[str, Any]], directory: Path) -> tuple[Path, float]:
    """Apply `steps` to a fresh copy of `model` and save the checkpoint in `directory`; returns (dir, apply seconds).

    No steps: the model's own directory (nothing is copied). An existing checkpoint in `directory` is reused.
    """
    from autoslm import checkpoint
    from autoslm.models import load_model, resolve
    from autoslm.pipeline import Step, apply_steps
    from autoslm.technique import ApplyContext

    if not steps:
        return resolve(model), 0.0
    if (directory / checkpoint.MANIFEST).exists():  # written last by save_dir: the checkpoint is complete
        return directory, 0.0
    lm = load_model(model)
    ctx = ApplyContext(tokenizer=lm.tokenizer, teacher_factory=lambda: load_model(model).model)
    t0 = time.perf_counter()
    compressed = apply_steps(lm.model, [Step(**s) for s in steps], ctx)
    seconds = time.perf_counter() - t0
    directory.mkdir(parents=True, exist_ok=True)
    checkpoint.save_dir(compressed, lm.tokenizer, directory)
    return directory, seconds


def slug(model: str, name: str) -> str:
    """A folder name for a candidate of a model: 'smollm2-135m_weight-only-int8'."""
    return re.sub(r"[^a-z0-9]+", "-", f"{model} {name}".lower()).strip("-")


def share_baseline(storage: str, study: str, baseline: dict[str, Any] | None) -> None:
    """Give `study` an already measured baseline, so every search of a benchmark budgets against the same ms."""
    if baseline is None:
        return
    import optuna

    s = optuna.create_study(study_name=study, storage=storage, load_if_exists=True)
    if "baseline" not in s.user_attrs:
        s.set_user_attr("baseline", baseline)

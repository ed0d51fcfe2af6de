"""Export of a search's winner: its checkpoint copied to RUN/checkpoint and RUN/recipe.yaml written beside it."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from autoslm.searching.settings import SearchSettings
from autoslm.searching.trials import TrialRecord


def export_best(
    best: TrialRecord, settings: SearchSettings, run_dir: Path, baseline: dict[str, Any]
) -> tuple[Path, Path]:
    """Copy the winner's checkpoint to run_dir/checkpoint and write run_dir/recipe.yaml beside it."""
    from autoslm import checkpoint, data
    from autoslm.models import parse_spec
    from autoslm.recipe import Recipe, build_steps, environment
    from autoslm.runtimes import get_runtime
    from autoslm.searching.objective import Objective

    dest = run_dir / "checkpoint"
    src = Path(best.checkpoint or "")
    seed = settings.seed if best.seed is None else best.seed  # processes sharing a study may differ in seed
    objective = Objective(
        model=settings.model, space=None, budget=None, run_dir=str(run_dir), seed=seed, runtime=settings.runtime
    )  # type: ignore[arg-type]
    if not checkpoint.weights_file(src).is_file():
        _rebuild(objective, best, dest)  # the winner ran on another node: apply its policy here (deterministic)
    elif src.resolve() != dest.resolve():
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(src, dest)
    target = settings_target(settings)
    recipe = Recipe(
        base_model={
            "name": settings.model,
            "source": parse_spec(settings.model).kind,
            "fingerprint": objective.base().fingerprint,
        },
        steps=build_steps(best.steps),
        calibration={"corpus": "calibration", "sha256": data.corpus_sha256("calibration")},
        seed=seed,
        target={
            "kind": target.kind,
            "runtime": settings.runtime,
            "runtime_version": get_runtime(settings.runtime).version(),
            "threads": settings.threads,  # what the candidates were measured with
            "fingerprint": target.fingerprint(),
        },
        budget=str(settings.limits),
        metrics={
            **best.metrics,
            "ppl": best.ppl,
            **{k: v for k, v in (best.quality or {}).items() if k.endswith("_acc") or k.startswith("kld_")},
            "baseline": {**baseline["metrics"], "ppl": baseline["ppl"]},
        },
        search={
            "backend": settings.backend,
            "sampler": settings.sampler,
            "study": settings.study,
            "trial": best.number,
        },
        environment=environment(),
        checkpoint_sha256=checkpoint.sha256_file(checkpoint.weights_file(dest)),
    )
    path = recipe.write(run_dir / "recipe.yaml")
    checkpoint.add_file(dest, "recipe.yaml", path.read_text())
    return path, dest


def settings_target(settings: SearchSettings) -> Any:
    from autoslm.targets import get_target

    return get_target(settings.target, token=settings.target_token)


def _rebuild(objective: Any, best: TrialRecord, dest: Path) -> None:
    planned, _ = objective.identify(best.steps)
    model, lm = objective.apply_policy(best.steps, planned)
    shutil.rmtree(dest, ignore_errors=True)
    objective.save(model, lm.tokenizer, dest, best.steps, planned)

"""Export of a search's winner: its checkpoint copied to RUN/checkpoint and RUN/recipe.yaml written beside it.

Export never leaves a half-written pair. The new checkpoint, its recipe inside it, is staged in RUN/.checkpoint.new;
then the old checkpoint is moved to RUN/.checkpoint.old, the new one into place, and recipe.yaml replaced (one
`os.replace` each). A kill between two of those steps leaves what `recover` puts right, and every export and every
search start calls it: the old pair back when the new checkpoint is not in place yet, or the new pair completed
(the checkpoint carries its own recipe.yaml) once it is. Tested by killing the process at each step
(AUTOSLM_FAULT=export:STEP, tests/test_hostile_inputs.py).
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path
from typing import Any

from autoslm import model_card
from autoslm.llamacpp import stock
from autoslm.run_dir import RunDir
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

    recover(run_dir)
    dest, staged = RunDir(run_dir).checkpoint, run_dir / STAGED
    shutil.rmtree(staged, ignore_errors=True)
    src = Path(best.checkpoint or "")
    seed = settings.seed if best.seed is None else best.seed  # processes sharing a study may differ in seed
    objective = Objective.from_settings(settings, run_dir, seed=seed)
    steps = build_steps(best.steps)
    if not checkpoint.weights_file(src).is_file():
        _rebuild(objective, best, staged)  # the winner ran on another node: apply its policy here (deterministic)
    else:
        shutil.copytree(src, staged)
        steps = produced_by(steps, best.plugins or {})
    target = settings_target(settings)
    recipe = Recipe(
        base_model={
            "name": settings.model,
            "source": parse_spec(settings.model).kind,
            "fingerprint": objective.fingerprint,
        },
        steps=steps,
        calibration={"corpus": "calibration", "sha256": data.corpus_sha256("calibration")},
        seed=seed,
        target={
            "kind": target.kind,
            "runtime": settings.runtime,
            "runtime_version": get_runtime(settings.runtime).version(),
            "threads": settings.threads,  # what the candidates were measured with
            "context": settings.context,  # tokens in the KV cache when decode was timed
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
        checkpoint_sha256=checkpoint.sha256_file(checkpoint.weights_file(staged)),
        stock=stock.recorded(staged),
    )
    checkpoint.add_file(staged, "recipe.yaml", recipe.text())
    model_card.write(staged, recipe)
    _fault("staged")
    return _commit(run_dir, staged), dest


STAGED, OLD = ".checkpoint.new", ".checkpoint.old"


def _commit(run_dir: Path, staged: Path) -> Path:
    """The staged checkpoint into place, then its recipe beside it (see the module's note)."""
    dest, old = RunDir(run_dir).checkpoint, run_dir / OLD
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        os.replace(dest, old)
    _fault("old-moved")
    os.replace(staged, dest)
    _fault("new-in-place")
    path = _write_recipe(run_dir, (dest / "recipe.yaml").read_text())
    _fault("recipe-written")
    shutil.rmtree(old, ignore_errors=True)
    return path


def _write_recipe(run_dir: Path, text: str) -> Path:
    path = RunDir(run_dir).recipe
    tmp = run_dir / ".recipe.yaml.new"
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def recover(run_dir: Path) -> None:
    """Put right a run directory whose export was killed midway: the old pair back if the new checkpoint was not in
    place yet, else recipe.yaml from the checkpoint it belongs to. Leftover staging is removed."""
    run = RunDir(run_dir)
    dest, old = run.checkpoint, run_dir / OLD
    if not dest.exists() and old.exists():
        os.replace(old, dest)
    inner = dest / "recipe.yaml"
    if inner.is_file() and (not run.recipe.is_file() or run.recipe.read_text() != inner.read_text()):
        _write_recipe(run_dir, inner.read_text())
    for leftover in (run_dir / STAGED, old, run_dir / ".recipe.yaml.new"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def _fault(step: str) -> None:
    """Tests only: AUTOSLM_FAULT=export:STEP kills this process (SIGKILL, as `kill -9` would) after STEP."""
    if os.environ.get("AUTOSLM_FAULT") == f"export:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


def produced_by(steps: list[Any], plugins: dict[str, list[str]]) -> list[Any]:
    """Recipe steps naming the plugin versions that produced the exported checkpoint (the trial's record), not the
    ones installed now: a plugin upgraded between a search and its --resume would otherwise put the new version's
    name on a checkpoint the old one made (`autoslm apply` with the new one then shows whether they agree)."""
    out = []
    for step in steps:
        dist, version = (plugins.get(step.technique) or [step.plugin, step.version])[:2]
        out.append(step.model_copy(update={"plugin": dist, "version": version}))
    return out


def settings_target(settings: SearchSettings) -> Any:
    from autoslm.targets import get_target

    return get_target(settings.target, token=settings.target_token)


def _rebuild(objective: Any, best: TrialRecord, dest: Path) -> None:
    planned, _ = objective.identify(best.steps)
    model, lm = objective.apply_policy(best.steps, planned)
    objective.save(model, lm.tokenizer, dest, best.steps, planned)

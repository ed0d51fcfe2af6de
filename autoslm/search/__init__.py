"""Budgeted search: `autoslm.search(...)` and the `autoslm search` command share this runner.

run_dir/
  study.db          the Optuna study (resumable; opens in optuna-dashboard)
  baseline.json     the uncompressed model's measurement and quality
  baseline/         the uncompressed checkpoint, re-measured beside close calls (see --recheck-rounds)
  trials.json       every trial: policy, metrics, constraints, status, reason
  recipe.yaml       the best feasible policy, every parameter explicit
  checkpoint/       its compressed checkpoint (safetensors + manifest)
  report.html       self-contained report (pareto.png embedded); `autoslm report DIR` regenerates it
  pareto.png        perplexity vs decode ms of every trial, Pareto front, budget, baseline, chosen policy
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from autoslm.errors import UserError


class SearchSettings(BaseModel):
    """What a search needs; also stored in the study so `--resume` continues the same search."""

    model_config = ConfigDict(extra="forbid")

    model: str = "smollm2-135m"
    budget: str = "decode_ms<=0.7x"
    space: str = "default"
    trials: int = Field(12, ge=1)
    out: str = "runs/search"
    seed: int = 0
    sampler: str = "tpe"
    storage: str | None = None
    study: str = "autoslm"
    timeout_s: float | None = None
    fidelity: str = "full"
    warm_start: bool = True
    backend: Literal["optuna", "ray"] = "optuna"
    ray_address: str | None = None
    max_concurrent: int = Field(2, ge=1)
    recheck_rounds: int = Field(4, ge=0)
    recheck_margin: float = Field(0.15, ge=0, lt=1)
    cpus_per_trial: float = Field(1.0, gt=0)
    target: str = "local"
    target_token: str | None = Field(None, exclude=True, repr=False)  # never stored in the study


@dataclass
class SearchResult:
    """Outcome of a search: the best feasible policy (if any), the Pareto set, every trial, and paths."""

    run_dir: Path
    baseline: dict[str, Any]
    trials: list[dict[str, Any]]
    best: dict[str, Any] | None
    pareto: list[dict[str, Any]]
    closest: list[dict[str, Any]] = field(default_factory=list)
    recipe_path: Path | None = None
    checkpoint_path: Path | None = None
    report_path: Path | None = None


def search(
    model: str = "smollm2-135m",
    budget: str = "decode_ms<=0.7x",
    space: str = "default",
    trials: int = 12,
    out: str | Path = "runs/search",
    resume: bool = False,
    progress: Any = None,
    **options: Any,
) -> SearchResult:
    """Search compression policies for `model` under `budget`; returns a SearchResult (see `run_search`)."""
    settings = SearchSettings(model=model, budget=budget, space=space, trials=trials, out=str(out), **options)
    return run_search(settings, resume=resume, progress=progress)


def run_search(settings: SearchSettings, *, resume: bool = False, progress: Any = None) -> SearchResult:
    import optuna

    from autoslm.models import model_info
    from autoslm.search.budget import Budget
    from autoslm.search.objective import Objective, TrialOutcome
    from autoslm.search.optuna_backend import finished_count, make_optuna_objective, make_sampler, make_storage
    from autoslm.search.space import load_space

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    budget = Budget.parse(settings.budget)
    run_dir = Path(settings.out)
    db = run_dir / "study.db"
    storage_url = settings.storage or f"sqlite:///{db.resolve()}"
    if not settings.storage and db.exists() and not resume:
        raise UserError(f"run directory '{run_dir}' already holds a search: pass --resume, or choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    storage = make_storage(storage_url)
    study = optuna.create_study(
        study_name=settings.study,
        storage=storage,
        sampler=make_sampler(settings.sampler, settings.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0),
        direction="minimize",
        load_if_exists=True,
    )
    stored = study.user_attrs.get("settings")
    if stored and resume:
        previous = SearchSettings.model_validate(stored)
        settings = previous.model_copy(
            update={"trials": max(settings.trials, previous.trials), "target_token": settings.target_token}
        )
        budget = Budget.parse(settings.budget)
    elif not stored:
        study.set_user_attr("settings", settings.model_dump())

    from autoslm.evaluate import Fidelity

    objective = Objective(
        model=settings.model,
        space=None,
        budget=budget,
        run_dir=str(run_dir),
        seed=settings.seed,
        fidelity_full=Fidelity.preset(settings.fidelity),
        target=settings.target,
        target_options=_target_options(settings),
        recheck_rounds=settings.recheck_rounds,
        recheck_margin=settings.recheck_margin,
    )  # type: ignore[arg-type]
    device = _check_target(settings)
    objective.space = load_space(settings.space, model_info(objective.base().model))
    _emit(progress, "space", objective.space)

    baseline = study.user_attrs.get("baseline")
    if baseline is None:
        _emit(progress, "baseline_start", None)
        out: TrialOutcome = objective.evaluate_policy([], None, trial_number=9999)
        if out.status != "complete":
            raise RuntimeError(f"the baseline model could not be measured: {out.reason}")
        baseline = {"metrics": out.metrics, "ppl": out.ppl, "low_ppl": out.low_ppl, "quality": out.quality}
        baseline["device"] = device
        study.set_user_attr("baseline", baseline)
        if objective.recheck_rounds > 0 and not (run_dir / "baseline").exists():
            Path(out.checkpoint or "").rename(run_dir / "baseline")  # kept: close calls re-measure against it
        shutil.rmtree(out.checkpoint or "", ignore_errors=True)
    (run_dir / "baseline.json").write_text(json.dumps(baseline, indent=2))
    _emit(progress, "baseline", {"baseline": baseline, "budget": budget})

    if settings.warm_start and not study.get_trials(deepcopy=False):
        from autoslm.search.warm_start import warm_start_policies

        for params in warm_start_policies(objective.space, settings.trials):
            study.enqueue_trial(params, user_attrs={"warm_start": True}, skip_if_exists=True)
    if settings.backend == "ray" and resume:
        from autoslm.search.ray_backend import fail_orphans

        fail_orphans(study)
    remaining = settings.trials - finished_count(study)

    def after(st: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        _keep_best_checkpoint(st, run_dir)
        _emit(
            progress,
            "trial",
            {"trial": _row(trial), "done": finished_count(st), "total": settings.trials, "best": _best(st)},
        )
        if settings.backend == "optuna" and finished_count(st) >= settings.trials:
            st.stop()

    if remaining > 0 and settings.backend == "ray":
        from autoslm.search.ray_backend import run_ray

        objective.run_dir = str(run_dir.resolve())  # Ray workers run elsewhere (another cwd, maybe another node)
        run_ray(objective, study, storage, settings, baseline, remaining, after)
    elif remaining > 0:
        run = make_optuna_objective(objective, study, baseline)
        study.optimize(
            run,
            n_trials=remaining + 4,
            timeout=settings.timeout_s,
            callbacks=[after],
            catch=(Exception,),
            gc_after_trial=True,
        )
    return _finish(study, settings, run_dir, baseline, budget)


def _row(t: Any) -> dict[str, Any]:
    attrs = dict(t.user_attrs)
    return {
        "number": t.number,
        "state": t.state.name.lower(),
        "value": t.value,
        "steps": attrs.get("steps", []),
        "policy_hash": attrs.get("policy_hash"),
        "metrics": attrs.get("metrics", {}),
        "violations": attrs.get("violations", {}),
        "feasible": bool(attrs.get("feasible")) and t.state.name == "COMPLETE",
        "ppl": attrs.get("ppl"),
        "low_ppl": attrs.get("low_ppl"),
        "quality": attrs.get("quality"),
        "status": attrs.get("status", "stale" if t.state.name == "FAIL" else t.state.name.lower()),
        "reason": attrs.get("reason"),
        "cached_from": attrs.get("cached_from"),
        "seconds": attrs.get("seconds", {}),
        "checkpoint": attrs.get("checkpoint"),
        "warm_start": bool(attrs.get("warm_start")),
        "node": attrs.get("node"),
        "recheck": attrs.get("recheck"),
    }


def _best(study: Any) -> dict[str, Any] | None:
    rows = [_row(t) for t in study.get_trials(deepcopy=False)]
    feasible = [r for r in rows if r["feasible"] and r["quality"]]
    return min(feasible, key=lambda r: (r["ppl"], r["number"])) if feasible else None


def _keep_best_checkpoint(study: Any, run_dir: Path) -> None:
    """Trial checkpoints are large: keep only the current best's (and none of the others)."""
    best = _best(study)
    keep = Path(best["checkpoint"]).resolve() if best and best.get("checkpoint") else None
    finished = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
    for d in (run_dir / "trials").glob("*"):
        # only finished trials' folders: other workers (Ray, or processes sharing the study) may be writing theirs
        if d.name.isdigit() and int(d.name) in finished and d.resolve() != keep:
            shutil.rmtree(d, ignore_errors=True)


def _finish(study: Any, settings: SearchSettings, run_dir: Path, baseline: dict[str, Any], budget: Any) -> SearchResult:
    from autoslm.search.pareto import pareto_front

    rows = [_row(t) for t in study.get_trials(deepcopy=False)]
    (run_dir / "trials.json").write_text(json.dumps(rows, indent=2, default=str))
    best = _best(study)
    result = SearchResult(run_dir=run_dir, baseline=baseline, trials=rows, best=best, pareto=pareto_front(rows))
    from autoslm import report

    result.report_path, _ = report.write(run_dir, settings.storage, settings.study)
    if best is None:
        measured = [r for r in rows if r["violations"]]
        result.closest = sorted(measured, key=lambda r: max(r["violations"].values()))[:3]
        return result
    result.recipe_path, result.checkpoint_path = export_best(best, settings, run_dir, baseline, budget)
    return result


def export_best(
    best: dict[str, Any], settings: SearchSettings, run_dir: Path, baseline: dict[str, Any], budget: Any
) -> tuple[Path, Path]:
    """Copy the winner's checkpoint to run_dir/checkpoint and write run_dir/recipe.yaml beside it."""
    from autoslm import checkpoint, data
    from autoslm.models import parse_spec
    from autoslm.recipe import Recipe, build_steps, environment
    from autoslm.search.objective import _BASE
    from autoslm.targets import get_target

    dest = run_dir / "checkpoint"
    src = Path(best["checkpoint"] or "")
    if not (src / "model.safetensors").is_file():
        _rebuild(best, settings, dest)  # the winner ran on another node: apply its policy here (deterministic)
    elif src.resolve() != dest.resolve():
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(src, dest)
    base = _BASE[settings.model]
    recipe = Recipe(
        base_model={"name": settings.model, "source": parse_spec(settings.model).kind, "fingerprint": base.fingerprint},
        steps=build_steps(best["steps"]),
        calibration={"corpus": "calibration", "sha256": data.corpus_sha256("calibration")},
        seed=settings.seed,
        target={
            "kind": "local" if settings.target == "local" else "remote",
            "fingerprint": get_target(settings.target, **_target_options(settings)).fingerprint(),
        },
        budget=str(budget),
        metrics={
            **best["metrics"],
            "ppl": best["ppl"],
            **{k: v for k, v in (best["quality"] or {}).items() if k.endswith("_acc")},
            "baseline": {**baseline["metrics"], "ppl": baseline["ppl"]},
        },
        search={
            "backend": settings.backend,
            "sampler": settings.sampler,
            "study": settings.study,
            "trial": best["number"],
        },
        environment=environment(),
        checkpoint_sha256=checkpoint.sha256_file(dest / "model.safetensors"),
    )
    path = recipe.write(run_dir / "recipe.yaml")
    checkpoint.add_file(dest, "recipe.yaml", path.read_text())
    return path, dest


def _rebuild(best: dict[str, Any], settings: SearchSettings, dest: Path) -> None:
    from autoslm import checkpoint
    from autoslm.search.objective import Objective

    objective = Objective(model=settings.model, space=None, budget=None, run_dir=str(dest.parent), seed=settings.seed)  # type: ignore[arg-type]
    model, lm = objective.apply_policy(best["steps"])
    shutil.rmtree(dest, ignore_errors=True)
    fingerprint = objective.base().fingerprint
    checkpoint.save_dir(model, lm.tokenizer, dest, steps=best["steps"], base_fingerprint=fingerprint)


def _target_options(settings: SearchSettings) -> dict[str, Any]:
    return {} if settings.target == "local" else {"token": settings.target_token}


def _check_target(settings: SearchSettings) -> dict[str, Any]:
    """Reach the target before any work: a wrong token or a dead agent is the user's to fix, not 12 failed trials."""
    from autoslm.targets import get_target
    from autoslm.targets.local import MeasurementError

    try:
        return dict(get_target(settings.target, **_target_options(settings)).fingerprint())
    except MeasurementError as exc:
        raise UserError(f"target {settings.target} is not reachable ({exc}); start `autoslm agent` there") from exc


def _emit(progress: Any, event: str, payload: Any) -> None:
    if progress is not None:
        progress(event, payload)


__all__ = ["SearchResult", "SearchSettings", "run_search", "search"]


class _CallableModule(__import__("types").ModuleType):
    """Lets `autoslm.search(...)` call the function while `autoslm.search` stays this package."""

    def __call__(self, *args: Any, **kwargs: Any) -> SearchResult:
        return search(*args, **kwargs)


__import__("sys").modules[__name__].__class__ = _CallableModule

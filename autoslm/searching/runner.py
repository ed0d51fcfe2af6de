"""The search runner: validated settings -> study -> baseline -> warm start -> backend -> result.

run_dir/
  study.db          the Optuna study (resumable; opens in optuna-dashboard)
  baseline.json     the uncompressed model's measurement and quality (and the presets a budget names: references)
  baseline/         the uncompressed checkpoint, re-measured beside close calls (see --recheck-rounds)
  references/NAME/  the checkpoint of each preset the budget names (size_mb<=Q4_K_M), measured after the baseline
  sensitivity/      tables a technique measured (quant.mixed: per-tensor sensitivity), drawn in the report
  trials.json       every trial's TrialRecord: policy, metrics, constraints, status, reason
  recipe.yaml       the best feasible policy, every parameter explicit       (export.py)
  checkpoint/       its compressed checkpoint (safetensors + manifest)      (export.py)
  report.html       written by the caller (CLI, `autoslm.search`) from the study: `autoslm report DIR` regenerates it
  pareto.png
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoslm.errors import UserError
from autoslm.run_dir import RunDir
from autoslm.searching.settings import SearchSettings
from autoslm.searching.trials import TrialRecord


@dataclass
class SearchResult:
    """Outcome of a search: the best feasible policy (if any), the Pareto set, every trial, and paths."""

    run_dir: Path
    settings: SearchSettings
    baseline: dict[str, Any]
    trials: list[TrialRecord]
    best: TrialRecord | None
    pareto: list[TrialRecord]
    closest: list[TrialRecord] = field(default_factory=list)
    recipe_path: Path | None = None
    checkpoint_path: Path | None = None
    report_path: Path | None = None
    forecast: str | None = None  # this run's forecast against its real duration (a run that did every trial)

    @property
    def failed(self) -> list[TrialRecord]:
        """The counted trials that failed (a technique or a measurement raised)."""
        return [r for r in self.trials if r.counted and r.status == "failed"]

    @property
    def all_failed(self) -> bool:
        """Every counted trial failed: nothing was learnt, and the search exits non-zero."""
        counted = [r for r in self.trials if r.counted]
        return bool(counted) and len(self.failed) == len(counted)


def run_search(settings: SearchSettings, *, resume: bool = False, progress: Any = None) -> SearchResult:
    """Run (or continue, with `resume`) the search `settings` describe. Nothing is written before the settings
    are known to be valid and the run directory is known to be free (or resumable with these settings)."""
    import optuna

    from autoslm.models import parse_spec, peek_config, resolve
    from autoslm.runtimes import get_runtime
    from autoslm.searching.backends import BackendJob, get_backend
    from autoslm.searching.forecast import after_baseline, against, refuse_if_it_cannot_fit
    from autoslm.searching.objective import Objective
    from autoslm.searching.references import measure_references, preset_steps
    from autoslm.searching.samplers import make_sampler
    from autoslm.searching.storage import make_storage
    from autoslm.searching.trials import finished_count

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # a failed trial: one line from the view; traceback in logs/
    run_dir = settings.run_dir
    run = RunDir(run_dir)
    db = run.study_db
    if not settings.storage and db.exists() and not resume:
        raise UserError(f"run directory '{run_dir}' already holds a search: pass --resume, or choose another --out")
    had_db = not settings.storage and db.exists()
    outputs = run.outputs()
    if not settings.storage and not db.exists() and outputs:
        raise UserError(
            f"run directory '{run_dir}' holds a previous search's outputs ({', '.join(outputs)}) but no study.db: "
            "they would be overwritten; choose another --out (or move them away)"
        )
    for name in settings.limits.references:  # a misspelt preset: one line before any work
        preset_steps(name, settings.runtime)
    config = peek_config(settings.model)  # a model directory: decided from config.json, nothing loaded or written
    refused = get_runtime(settings.runtime).refuses_model(config) if config is not None else None
    if refused:
        raise UserError(f"--runtime {settings.runtime}: {refused}")
    if parse_spec(settings.model).kind != "hub":  # the runtime's own check of the files (llama.cpp: the tokenizer)
        get_runtime(settings.runtime).check_files(resolve(settings.model))
        # a model that cannot fit: one line, now
        refuse_if_it_cannot_fit(resolve(settings.model), settings.model, files_only=_files_only(settings))
    device = _check_target(settings)
    cores = int(device.get("cores") or 0)
    if cores and settings.threads > cores:
        raise UserError(f"--threads {settings.threads}: the target has {cores} CPU threads; use at most {cores}")
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".autoslm-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"--out '{run_dir}' is not a writable directory ({exc.strerror or exc})") from exc
    with run_dir_lock(run_dir, shared=bool(settings.storage)):
        from autoslm.searching.export import recover

        recover(run_dir)  # an export killed midway: both old or both new again (export.py)
        storage = make_storage(settings.storage or f"sqlite:///{db.resolve()}")
        study = optuna.create_study(
            study_name=settings.study,
            storage=storage,
            sampler=make_sampler(settings.sampler, settings.seed),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0),
            direction="minimize",
            load_if_exists=True,
        )
        stored = study.user_attrs.get("settings")
        if not stored and resume and had_db:
            raise UserError(
                f"--resume: '{db}' holds no stored autoslm search (empty, or written by something else): nothing to "
                "resume; move it away or choose another --out"
            )
        if stored:
            if not resume and settings.storage is None:
                raise UserError(
                    f"run directory '{run_dir}' already holds a search: pass --resume, or choose another --out"
                )
            settings, changed = settings.resumed_from(stored)
            if changed:
                _emit(progress, "resumed", changed)
        else:
            study.set_user_attr("settings", settings.model_dump())
        backend = get_backend(settings.backend)

        objective = Objective.from_settings(settings, run_dir)
        try:
            refused = get_runtime(settings.runtime).refuses_model(objective.files().config)
            if refused:
                raise UserError(f"--runtime {settings.runtime}: {refused}")
            objective.space = _runnable_space(settings, objective, progress)
        except UserError:
            if not stored and not had_db and not settings.storage:  # nothing searched: no study to trip the next run
                db.unlink(missing_ok=True)
                run.lock.unlink(missing_ok=True)
                if created and not any(run_dir.iterdir()):
                    run_dir.rmdir()
            raise
        _emit(progress, "space", objective.space)
        changed_plugins = _plugin_versions(study, objective.space)
        if changed_plugins:
            changed_text = "; ".join(changed_plugins)
            _emit(progress, "warning", f"plugins changed since this study began ({changed_text}): their earlier "
                  "trials stay as measured; identical policies are evaluated again, not reused")  # fmt: skip
        crowded = _every_core(settings, cores)
        if crowded:
            _emit(progress, "warning", crowded)
        baseline = _baseline(objective, study, run_dir, device, progress)
        if (baseline.get("interference") or {}).get("disturbed"):
            objective.busy_streak = 1  # a baseline that never settled: the machine is known busy from the start
        _emit(progress, "baseline", {"baseline": baseline, "budget": settings.limits, "context": settings.context})
        if any(name not in (baseline.get("references") or {}) for name in settings.limits.references):
            measure_references(objective, baseline, settings.limits.references, progress)
            study.set_user_attr("baseline", baseline)
            run.baseline_json.write_text(json.dumps(baseline, indent=2))
            _emit(progress, "references", {"baseline": baseline, "budget": settings.limits})

        if settings.warm_start and not study.get_trials(deepcopy=False):
            from autoslm.searching.warm_start import warm_start_policies

            for params in warm_start_policies(objective.space, settings.trials):
                study.enqueue_trial(params, user_attrs={"warm_start": True}, skip_if_exists=True)
        backend.prepare(study, resume)
        remaining = settings.trials - finished_count(study)
        clock = {"start": time.monotonic()}

        def after(st: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            from autoslm.searching.trials import best, records

            rows = records(st)
            _keep_best_checkpoint(rows, run_dir)
            done = finished_count(st)
            payload = {"trial": TrialRecord.from_trial(trial), "done": done, "total": settings.trials}
            elapsed, ran = time.monotonic() - clock["start"], done - (settings.trials - remaining)
            left = time_left(elapsed, ran, settings.trials - done)
            _emit(progress, "trial", {**payload, "best": best(rows), "left_s": left})
            if predicted is not None and ran == 1 and left is not None and "after_first_s" not in clock:
                # the baseline prices a trial like the unquantized model; the first trial is a real one
                clock["after_first_s"] = elapsed + left
                _emit(progress, "forecast_revised", {"total_s": elapsed + left, "per_trial_s": elapsed})

        predicted = None
        if remaining == settings.trials:  # a fresh search: say what it will cost (checked against the end below)
            predicted = after_baseline(
                baseline, remaining, settings.runtime, settings.timeout_s, files_only=_files_only(settings)
            )
            if predicted is not None:
                _emit(progress, "forecast", predicted)
                study.set_user_attr("forecast", predicted.as_dict())
        started = clock["start"] = time.monotonic()
        if remaining > 0:
            backend.run(BackendJob(objective, study, storage, settings, baseline, remaining, after))
        result = _finish(study, settings, run_dir, baseline)
        if predicted is not None and finished_count(study) >= settings.trials:
            took = time.monotonic() - started
            said = {**predicted.as_dict(), "after_first_s": clock.get("after_first_s")}
            result.forecast = against(said, took)
            study.set_user_attr("forecast", {**said, "took_s": took})
        return result


def time_left(elapsed_s: float, ran: int, left: int) -> float | None:
    """The rest of a search at the pace of this run so far (its trials as they came: cached, infeasible and pruned
    ones included, and parallel workers): elapsed / ran x left; None before the first trial of this run."""
    return elapsed_s / ran * left if ran > 0 else None


@contextlib.contextmanager
def run_dir_lock(run_dir: Path, shared: bool = False) -> Iterator[None]:
    """Hold the run directory for this search (an advisory lock on RUN/.autoslm.lock, released when the process
    ends, even by kill -9). A second process resuming the same directory is refused in one line naming the first:
    two of them ran 5 trials for `--trials 4`. A study in a shared --storage is meant for several processes
    (`shared`): they take the lock shared, so only a process using the directory alone is refused beside them."""
    import fcntl
    import socket

    path = RunDir(run_dir).lock
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise UserError(
                f"run directory '{run_dir}' is in use by another autoslm search ({holder}): wait for it to end, or run "
                "several processes on one study with --storage URL --study NAME (each with its own --out)"
            ) from None
        if not shared:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        yield
    finally:
        os.close(fd)


def _files_only(settings: SearchSettings) -> bool:
    """Whether no technique of the space needs the torch model, in a runtime that takes the model's files: then the
    search never loads it (`Objective.apply_policy`). False where the space cannot be read (refused later)."""
    from autoslm.plugins import get_registry
    from autoslm.runtimes import works_from_files
    from autoslm.searching.space import find_space_file, space_techniques

    try:
        names = space_techniques(find_space_file(settings.space_name))
        return works_from_files(settings.runtime, [get_registry().technique(n).cls for n in names])
    except UserError:
        return False


def _runnable_space(settings: SearchSettings, objective: Any, progress: Any) -> Any:
    """The space to search on this model: the runtime's default space leaves out, with a warning, what the runtime
    refuses on this model (llama.cpp: depth pruning on SmolLM3) or what a technique refuses on it (width pruning on
    Phi-3's fused MLP); a space the user named is refused instead. Asked of the model's files (config.json), and of
    the torch model only for a technique that needs one (`Technique.needs_torch_model`: the search loads it anyway)."""
    from autoslm.models import model_info
    from autoslm.plugins import get_registry
    from autoslm.runtimes import get_runtime
    from autoslm.searching.space import load_space

    files = objective.files()
    space = load_space(settings.space_name, model_info(files))
    runtime, registry = get_runtime(settings.runtime), get_registry()

    def subject(cls: Any) -> Any:
        return objective.base().model if cls.needs_torch_model else files

    reasons = {
        t.name: runtime.refuses_on(registry.technique(t.name).cls, files.config)
        or registry.technique(t.name).cls.refuses_model(subject(registry.technique(t.name).cls))
        for t in space.techniques
    }
    refused = {name: why for name, why in reasons.items() if why}
    if not refused:
        return space
    why = "; ".join(f"{name}: {reason}" for name, reason in refused.items())
    if settings.space or set(refused) & set(space.required):
        raise UserError(f"search space {settings.space_name}: {why} (drop it from the space, or use --runtime torch)")
    _emit(progress, "warning", f"left out of the search on this model in {settings.runtime}: {why}")
    return space.without(set(refused))


def _baseline(objective: Any, study: Any, run_dir: Path, device: dict[str, Any], progress: Any) -> dict[str, Any]:
    """The uncompressed model's measurement and quality: measured once per study, stored in it."""
    run = RunDir(run_dir)
    baseline = study.user_attrs.get("baseline")
    if baseline is None:
        _emit(progress, "baseline_start", None)
        out = objective.evaluate_policy([], None, trial_number="baseline")
        if out.status != "complete":
            if (out.reason or "").startswith("UserError: "):  # the user's to fix: one line, no traceback
                raise UserError(f"the baseline model could not be measured: {out.reason.removeprefix('UserError: ')}")
            raise RuntimeError(f"the baseline model could not be measured: {out.reason}")
        unmeasured = [lim.metric for lim in objective.budget.limits if lim.metric not in out.metrics]
        if unmeasured:
            raise UserError(
                f"budget metric(s) {', '.join(unmeasured)} are not measured for the {objective.runtime} runtime on "
                f"{objective.target}: budget on {', '.join(sorted(out.metrics))}"
            )
        baseline = {"metrics": out.metrics, "ppl": out.ppl, "low_ppl": out.low_ppl, "quality": out.quality}
        baseline["seconds"] = out.seconds  # every phase a trial goes through: the forecast's unit
        if out.interference:
            baseline["interference"] = out.interference
        baseline["device"] = device
        study.set_user_attr("baseline", baseline)
        if objective.recheck_rounds > 0 and not run.baseline.exists():
            Path(out.checkpoint or "").rename(run.baseline)  # kept: close calls re-measure against it
        shutil.rmtree(out.checkpoint or "", ignore_errors=True)
    run.baseline_json.write_text(json.dumps(baseline, indent=2))
    return baseline


def _keep_best_checkpoint(rows: list[TrialRecord], run_dir: Path) -> None:
    """Trial checkpoints are large: keep only the current best's (and none of the others)."""
    from autoslm.searching.trials import best

    winner = best(rows)
    keep = Path(winner.checkpoint).resolve() if winner and winner.checkpoint else None
    finished = {r.number for r in rows if r.state not in ("running", "waiting")}
    for d in RunDir(run_dir).trials.glob("*"):
        # only finished trials' folders: other workers (Ray, or processes sharing the study) may be writing theirs
        if d.name.isdigit() and int(d.name) in finished and d.resolve() != keep:
            shutil.rmtree(d, ignore_errors=True)


def _finish(study: Any, settings: SearchSettings, run_dir: Path, baseline: dict[str, Any]) -> SearchResult:
    from autoslm.searching.export import export_best
    from autoslm.searching.pareto import pareto_front
    from autoslm.searching.trials import best, records

    rows = records(study)
    RunDir(run_dir).trials_json.write_text(json.dumps([r.model_dump() for r in rows], indent=2, default=str))
    winner = best(rows)
    result = SearchResult(
        run_dir=run_dir, settings=settings, baseline=baseline, trials=rows, best=winner, pareto=pareto_front(rows)
    )
    if winner is None:
        measured = [r for r in rows if r.violations]
        result.closest = sorted(measured, key=lambda r: max(r.violations.values()))[:3]
        return result
    result.recipe_path, result.checkpoint_path = export_best(winner, settings, run_dir, baseline)
    return result


def _check_target(settings: SearchSettings) -> dict[str, Any]:
    """Reach the target before any work: a wrong token or a dead agent is the user's to fix, not 12 failed trials."""
    from autoslm.targets import get_target
    from autoslm.targets.local import MeasurementError

    try:
        return dict(get_target(settings.target, token=settings.target_token).fingerprint())
    except MeasurementError as exc:
        raise UserError(f"target {settings.target} is not reachable ({exc}); start `autoslm agent` there") from exc


def _every_core(settings: SearchSettings, cores: int) -> str | None:
    """A warning when the budget limits time and the measurements use every one of the target's `cores` (0: not
    known): then nothing else can run beside them without landing in the timings (measured: docs/benchmarks.md,
    "Verdicts on a loaded machine")."""
    if not settings.limits.timed or not cores or settings.threads < cores:
        return None
    fewer = f"; where the deployment allows, --threads {cores - 1} leaves one free" if cores > 1 else ""
    return (
        f"--threads {settings.threads} measures with every core of the target ({cores}): any other work there slows "
        f"the timings (they are re-measured when it is seen, not cancelled){fewer}"
    )


def _plugin_versions(study: Any, space: Any) -> list[str]:
    """Record the distribution and version of each technique in the space; on resume, list those that changed
    (the policy cache is keyed by them, so a fixed plugin's results are never reused)."""
    from autoslm.plugins import get_registry

    registry = get_registry()
    now = {t.name: f"{registry.technique(t.name).dist} {registry.technique(t.name).version}" for t in space.techniques}
    before = study.user_attrs.get("plugins") or {}
    study.set_user_attr("plugins", {**before, **now})
    return [f"{n}: {before[n]} -> {v}" for n, v in sorted(now.items()) if n in before and before[n] != v]


def _emit(progress: Any, event: str, payload: Any) -> None:
    if progress is not None:
        progress(event, payload)


__all__ = ["SearchResult", "run_search"]

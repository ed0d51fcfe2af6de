"""The Ray Tune backend: the same space, objective and Optuna study, with trials spread over a Ray cluster.

    driver (this process)                               Ray workers (any node)
    Tuner + ConcurrencyLimiter(OptunaSearch) ---------> _trainable(config): Objective.evaluate_policy(steps)
      OptunaSearch asks/tells the run's Optuna study        loads the base model once per worker process
      (same sampler, same storage: study.db)                (reuse_actors=True: the next trial reuses it)
      records each outcome + the node that ran it     <---  tune.report({"objective": ppl, "outcome": ...})

The searcher subclass keeps the engine's contract: identical policies are answered from the cache (the worker only
echoes the cached trial number), each outcome is recorded exactly as the Optuna backend records it (user attributes,
constraints, failure reasons), and progress events are the same. A worker or node that dies mid-trial makes Tune
retry the trial (FailureConfig.max_failures); when retries are exhausted the trial is failed with the reason.
Pruning uses the objective's own hard rule (low-fidelity perplexity > 3x the baseline's and worse than the best
candidate within budget so far, whose figure the searcher puts in the trial's config); Optuna's median pruner
needs the study inside the worker, which a remote node does not have.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict
from pathlib import Path
from typing import Any

from autoslm.run_dir import RunDir
from autoslm.searching.backends import BackendJob, SearchBackend

META = ("__trial__", "__cached__", "__incumbent__")


class RayBackend(SearchBackend):
    name = "ray"
    help = "Ray Tune over a Ray cluster (--ray-address), trials on any node"

    def prepare(self, study: Any, resume: bool) -> None:
        if resume:
            fail_orphans(study)

    def run(self, job: BackendJob) -> None:
        job.objective.run_dir = str(Path(job.objective.run_dir).resolve())  # workers run elsewhere
        run_ray(job)


def _trainable(config: dict[str, Any], objective: Any, baseline: dict[str, Any]) -> None:
    """One trial on a Ray worker. Module-level so Ray can ship it by reference."""
    import ray
    from ray import tune

    from autoslm.searching import policy
    from autoslm.searching.objective import BASE_FILES, BASE_MODELS

    number = int(config["__trial__"])
    ctx = ray.get_runtime_context()
    node = {
        "node_id": ctx.get_node_id(),
        "ip": ray.util.get_node_ip_address(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "base_reused": objective.model in BASE_MODELS or objective.model in BASE_FILES,  # torch model, or files
    }
    if config.get("__cached__") is not None:
        tune.report({"objective": 0.0, "cached": int(config["__cached__"]), "node": json.dumps(node)})
        return
    try:
        workers = RunDir(objective.run_dir).workers
        workers.mkdir(parents=True, exist_ok=True)
        (workers / f"{number:04d}.pid").write_text(str(os.getpid()))
        steps = policy.steps(objective.space, {k: v for k, v in config.items() if k not in META})
        out = objective.evaluate_policy(steps, baseline, trial_number=number, incumbent=config.get("__incumbent__"))
    except Exception as exc:  # this node cannot run it (a folder it cannot write, a model it lacks): say so, once
        error = f"{type(exc).__name__}: {exc}".splitlines()[0][:400]
        tune.report({"objective": 0.0, "error": error, "node": json.dumps(node)})
        return
    # JSON strings: Tune flattens nested dicts in results
    tune.report({"objective": out.ppl, "outcome": json.dumps(asdict(out)), "node": json.dumps(node)})


def _define_searcher() -> type:
    """OptunaSearch that answers repeated policies from the cache and records outcomes like the Optuna backend.

    Defined on first use (importing Ray Tune takes over a second; listing backends must not). The run's Optuna study
    is the state that survives (resume reads it), so Tune's own searcher checkpoints are skipped, and pickling (Tune
    pickles its configuration) leaves out the storage connection and the callback.
    """
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    from autoslm.searching import policy
    from autoslm.searching.objective import TrialOutcome
    from autoslm.searching.trials import record, replay

    class AutoslmOptunaSearch(OptunaSearch):
        _TRANSIENT = ("_ot_study", "_storage", "_ot_trials", "after_trial", "objective")

        def __init__(self, *args: Any, objective: Any, after_trial: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.objective = objective
            self.after_trial = after_trial

        def __getstate__(self) -> dict[str, Any]:
            return {k: v for k, v in self.__dict__.items() if k not in self._TRANSIENT}

        def save(self, checkpoint_path: str) -> None:
            return None

        def restore(self, checkpoint_path: str) -> None:
            return None

        def suggest(self, trial_id: str) -> dict[str, Any] | None:
            params = super().suggest(trial_id)
            if params is None:
                return None
            ot = self._ot_trials[trial_id]
            steps = policy.steps(self.objective.space, {k: v for k, v in params.items() if k not in META})
            h = self.objective.identify(steps)[1]
            cached = next(
                (
                    t.number
                    for t in self._ot_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                    if t.user_attrs.get("policy_hash") == h
                ),
                None,
            )
            from autoslm.searching.backends.optuna import incumbent_low_ppl

            incumbent = incumbent_low_ppl(self._ot_study)
            return {**params, "__trial__": ot.number, "__cached__": cached, "__incumbent__": incumbent}

        def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
            if trial_id in self._completed_trials or trial_id not in self._ot_trials:
                return
            S = optuna.trial.TrialState
            ot = self._ot_trials[trial_id]
            state, value = S.FAIL, None
            if result and result.get("cached") is not None:
                previous = self._ot_study.trials[int(result["cached"])]
                replay(ot, previous)
                state, value = S.COMPLETE, previous.value
            elif result and result.get("outcome"):
                out = TrialOutcome(**json.loads(result["outcome"]))
                record(ot, out)
                if out.status in ("complete", "infeasible"):
                    state, value = S.COMPLETE, out.ppl
                elif out.status == "pruned":
                    state = S.PRUNED
            elif result and result.get("error"):  # raised on its node, before or around the trial's own handling
                where = json.loads(result.get("node") or "{}")
                ot.set_user_attr("status", "failed")
                ot.set_user_attr("reason", f"on {where.get('host')} ({where.get('ip')}): {result['error']}")
            else:
                ot.set_user_attr("status", "failed")
                ot.set_user_attr("reason", "the Ray worker running this trial died, and retries ran out")
            if result and result.get("node"):
                ot.set_user_attr("node", json.loads(result["node"]))
            self._ot_study.tell(ot, value, state=state)
            self._completed_trials.add(trial_id)
            self.after_trial(self._ot_study, self._ot_study.trials[ot.number])

    AutoslmOptunaSearch.__module__ = __name__
    AutoslmOptunaSearch.__qualname__ = "AutoslmOptunaSearch"
    return AutoslmOptunaSearch


def __getattr__(name: str) -> Any:
    if name == "AutoslmOptunaSearch":  # defined on first use, then an ordinary module attribute (picklable)
        cls = _define_searcher()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def run_ray(job: BackendJob) -> None:
    """Run `job.remaining` trials through Ray Tune; `job.after_trial(study, frozen_trial)` as each finishes."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no Tune tables over our progress bar
    import ray
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from autoslm.searching import policy
    from autoslm.searching.samplers import make_sampler

    settings, objective, study = job.settings, job.objective, job.study
    if not ray.is_initialized():
        ray.init(
            address=settings.ray_address,
            include_dashboard=False,
            log_to_driver=False,
            logging_level="ERROR",
            configure_logging=True,
        )
    searcher = __getattr__("AutoslmOptunaSearch")(
        space=lambda trial: policy.sample(trial, objective.space),
        metric="objective",
        mode="min",
        sampler=make_sampler(settings.sampler, settings.seed),
        study_name=study.study_name,
        storage=job.storage,
        objective=objective,
        after_trial=job.after_trial,
    )
    trainable = tune.with_resources(
        tune.with_parameters(_trainable, objective=objective, baseline=job.baseline), {"cpu": settings.cpus_per_trial}
    )
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=settings.max_concurrent),
            num_samples=job.remaining,
            reuse_actors=True,
            time_budget_s=settings.timeout_s,
        ),
        run_config=tune.RunConfig(
            name=f"autoslm-{study.study_name}",
            storage_path=str(RunDir(objective.run_dir).ray.resolve()),
            failure_config=tune.FailureConfig(max_failures=2),
            verbose=0,
        ),
    )
    tuner.fit()


def fail_orphans(study: Any) -> int:
    """Trials a killed driver left RUNNING have no worker any more: fail them (without a reason: not counted)."""
    import optuna

    S = optuna.trial.TrialState
    orphans = [t for t in study.get_trials(deepcopy=False) if t.state == S.RUNNING]
    for t in orphans:
        study._storage.set_trial_state_values(t._trial_id, state=S.FAIL)
    return len(orphans)

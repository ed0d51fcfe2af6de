"""The Optuna controller: a persistent study, TPE or NSGA-II, budgets as constraints, low-fidelity pruning.

Persistence: SQLite in the run directory by default (any Optuna storage URL with --storage; `journal:PATH` for
Optuna's journal file). Completed trials are committed as they finish, so Ctrl-C or kill -9 loses none. Trials a
dead process left RUNNING stop sending heartbeats; when the search resumes Optuna marks them failed and
`RetryHeartbeatStaleTrialCallback` re-queues their parameters, and they are not counted as finished.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import asdict
from typing import Any

import optuna

from autoslm.search.objective import Objective, TrialOutcome, canonical_hash, policy_steps
from autoslm.search.space import SearchSpace, encode_choice
from autoslm.space import Categorical, Float, Int

HEARTBEAT_S = 5
GRACE_S = 15


class TrialFailed(Exception):
    """A trial's technique or measurement raised: the trial fails with the reason, the search goes on."""


def make_storage(url: str) -> Any:
    if url.startswith("journal:"):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        return JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
    from sqlalchemy.exc import SQLAlchemyError

    for attempt in range(5):  # processes joining a fresh database race to create Optuna's schema: retry
        try:
            return RDBStorage(
                url,
                heartbeat_interval=HEARTBEAT_S,
                grace_period=GRACE_S,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2),
                engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None,
            )
        except SQLAlchemyError:
            if attempt == 4:
                raise
            time.sleep(1.0 + attempt)
    raise AssertionError("unreachable")


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(
            seed=seed, multivariate=True, group=True, n_startup_trials=5, constant_liar=True
        )
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=8)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    from autoslm.errors import UserError

    raise UserError(f"unknown sampler '{name}': use tpe, nsga2 or random")


def sample_policy(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    """Define-by-run: choose techniques (one per exclusive group), then each chosen technique's parameters."""
    policy: dict[str, Any] = {}
    for group in space.groups:
        key = f"use:{'|'.join(group)}"
        required = [t for t in group if t in space.required]
        choices: list[Any] = required or [None, *group]
        policy[key] = choices[0] if len(choices) == 1 else trial.suggest_categorical(key, choices)
    chosen = set(policy.values()) | set(space.required)
    for t in space.techniques:
        if t.name not in chosen:
            continue
        for p, dim in t.dims.items():
            name = f"{t.name}.{p}"
            if isinstance(dim, Float):
                policy[name] = trial.suggest_float(name, dim.low, dim.high, log=dim.log)
            elif isinstance(dim, Int):
                policy[name] = trial.suggest_int(name, dim.low, dim.high, step=dim.step)
            elif isinstance(dim, Categorical):
                policy[name] = trial.suggest_categorical(name, [encode_choice(c) for c in dim.choices])
    return policy


def finished_count(study: optuna.Study) -> int:
    """Trials that count toward --trials: complete, pruned, or failed with a reason (not stale retries)."""
    S = optuna.trial.TrialState
    return sum(
        1
        for t in study.get_trials(deepcopy=False)
        if t.state in (S.COMPLETE, S.PRUNED) or (t.state == S.FAIL and "reason" in t.user_attrs)
    )


def record(trial: optuna.Trial, out: TrialOutcome) -> None:
    data = asdict(out)
    for key, value in data.items():
        if value is not None and key != "quality":
            trial.set_user_attr(key, value)
    if out.quality:
        trial.set_user_attr("quality", out.quality)
    for metric, v in out.violations.items():
        trial.set_constraint(metric, v)


def _same_policy(
    study: optuna.Study, trial: optuna.Trial, h: str, wait_s: float = 2.0, max_wait_s: float = 7200.0
) -> optuna.trial.FrozenTrial | None:
    """A complete or pruned trial with the same policy hash; if an earlier trial (another process) is evaluating it,
    wait for it.

    Both twins have claimed the hash before looking, so exactly one of two simultaneous claimants (the lower trial
    number) evaluates and the other waits for its result.
    """
    S = optuna.trial.TrialState
    deadline = time.monotonic() + max_wait_s
    while True:
        same = [
            t
            for t in study.get_trials(deepcopy=False, states=(S.COMPLETE, S.PRUNED, S.RUNNING))
            if t.number != trial.number
            and t.user_attrs.get("policy_hash") == h
            and (t.state != S.RUNNING or t.number < trial.number)
        ]
        done = [t for t in same if t.state != S.RUNNING]
        if done:
            return done[0]
        if not same or time.monotonic() > deadline:
            return None
        time.sleep(wait_s)  # a RUNNING twin in another process
        optuna.storages.fail_stale_trials(study)  # ... unless that process died: no heartbeat, failed after grace


def make_optuna_objective(objective: Objective, study: optuna.Study, baseline: dict[str, Any]) -> Any:
    def run(trial: optuna.Trial) -> float:
        policy = sample_policy(trial, objective.space)
        steps = policy_steps(objective.space, policy)
        h = canonical_hash(steps, objective.hash_extra())
        trial.set_user_attr("node", {"host": socket.gethostname(), "pid": os.getpid()})
        trial.set_user_attr("policy_hash", h)  # claim the policy before looking for twins: no check-then-claim race
        previous = _same_policy(study, trial, h)
        if previous is not None:  # identical policy: reuse, never evaluate twice
            for key, value in previous.user_attrs.items():
                if key != "node":
                    trial.set_user_attr(key, value)
            trial.set_user_attr("cached_from", previous.number)
            for metric, v in (previous.user_attrs.get("violations") or {}).items():
                trial.set_constraint(metric, v)
            if previous.state == optuna.trial.TrialState.PRUNED:  # the same low-fidelity result: pruned again
                raise optuna.TrialPruned(previous.user_attrs.get("reason"))
            return float(previous.value)

        def report_low(value: float) -> bool:
            trial.report(value, 0)
            return trial.should_prune()

        out = objective.evaluate_policy(steps, baseline, report_low=report_low, trial_number=trial.number)
        record(trial, out)
        if out.status == "failed":
            raise TrialFailed(out.reason)
        if out.status == "pruned":
            raise optuna.TrialPruned(out.reason)
        return out.ppl

    return run

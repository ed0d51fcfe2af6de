"""The Optuna backend: trials run in this process, one after another (`study.optimize`), pruned on low fidelity.

Several processes can share one study (`--storage` of a server database or a journal file): each runs this backend,
and an identical policy another process is already evaluating is waited for, not evaluated twice.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from autoslm.errors import UserError
from autoslm.searching.backends import BackendJob, SearchBackend


class TrialFailed(Exception):
    """A trial's technique or measurement raised: the trial fails with the reason, the search goes on."""


class OptunaBackend(SearchBackend):
    name = "optuna"
    help = "trials in this process; several processes may share one --storage"

    @classmethod
    def check(cls, settings: Any) -> None:
        if settings.ray_address:
            raise UserError("--ray-address needs --backend ray")

    def run(self, job: BackendJob) -> None:
        import optuna

        from autoslm.searching.trials import finished_count

        def after(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            job.after_trial(study, trial)
            if finished_count(study) >= job.settings.trials:
                study.stop()

        try:
            job.study.optimize(
                make_trial_function(job),
                n_trials=job.remaining + 4,  # a few extra: stale retries do not count
                timeout=job.settings.timeout_s,
                callbacks=[after],
                catch=(Exception,),
                gc_after_trial=True,
            )
        except KeyboardInterrupt:
            requeue_interrupted(job.study)
            raise


def requeue_interrupted(study: Any) -> None:
    """Ctrl-C mid-trial: Optuna marks the trial failed. It is not blamed on its policy: it has no reason, so it
    never counts toward --trials; the study lists it as interrupted, and its parameters are queued, so `--resume`
    runs it first."""
    import optuna

    seen = list(study.user_attrs.get("interrupted", []))
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,)):
        if "reason" not in t.user_attrs and t.number not in seen:
            seen.append(t.number)
            if t.params:
                study.enqueue_trial(t.params, user_attrs={"rerun_of": t.number})
    study.set_user_attr("interrupted", seen)


def make_trial_function(job: BackendJob) -> Any:
    import optuna

    from autoslm.searching import policy
    from autoslm.searching.trials import record, replay

    objective, study = job.objective, job.study

    def run(trial: optuna.Trial) -> float:
        steps = policy.steps(objective.space, policy.sample(trial, objective.space))
        identity = objective.identify(steps)
        trial.set_user_attr("node", {"host": socket.gethostname(), "pid": os.getpid()})
        trial.set_user_attr("policy_hash", identity[1])  # claim the policy before looking for twins: no race
        previous = _same_policy(study, trial, identity[1])
        if previous is not None:  # identical policy: reuse, never evaluate twice
            replay(trial, previous)
            if previous.state == optuna.trial.TrialState.PRUNED:  # the same low-fidelity result: pruned again
                raise optuna.TrialPruned(previous.user_attrs.get("reason"))
            return float(previous.value)

        def report_low(value: float) -> bool:
            trial.report(value, 0)
            return trial.should_prune()

        out = objective.evaluate_policy(
            steps, job.baseline, report_low=report_low, trial_number=trial.number, identity=identity,
            incumbent=incumbent_low_ppl(study),
        )  # fmt: skip
        record(trial, out)
        if out.status == "failed":
            raise TrialFailed(out.reason)
        if out.status == "pruned":
            raise optuna.TrialPruned(out.reason)
        return out.ppl

    return run


def incumbent_low_ppl(study: Any) -> float | None:
    """The lowest low-fidelity perplexity of the study's complete trials within budget; None when there is none
    (see `Objective.evaluate_policy`: what the hard pruning rule compares with)."""
    import optuna

    lows = [
        float(t.user_attrs["low_ppl"])
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if t.user_attrs.get("status") == "complete" and t.user_attrs.get("feasible") and t.user_attrs.get("low_ppl")
    ]
    return min(lows) if lows else None


def _same_policy(study: Any, trial: Any, h: str, wait_s: float = 2.0, max_wait_s: float = 7200.0) -> Any:
    """A complete or pruned trial with the same policy hash; if an earlier trial (another process) is evaluating it,
    wait for it.

    Both twins have claimed the hash before looking, so exactly one of two simultaneous claimants (the lower trial
    number) evaluates and the other waits for its result.
    """
    import optuna

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

"""The trial record: what one trial measured and concluded, written by every backend, read by everything else.

A backend runs `Objective.evaluate_policy` (or finds a twin policy already evaluated) and writes the outcome into
its Optuna trial with `record` or `replay`; `TrialRecord.from_trial` reads it back. The report, the Pareto set,
the live view, `trials.json` and the export of the winner all read `TrialRecord`s, never Optuna's attributes.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from autoslm.searching.objective import TrialOutcome


class TrialRecord(BaseModel):
    """One finished (or running) trial of a study."""

    model_config = ConfigDict(frozen=True)

    number: int
    state: str = Field(description="Optuna's state: complete | pruned | fail | running | waiting")
    value: float | None = None
    steps: list[dict[str, Any]] = Field(default_factory=list)
    seed: int | None = Field(None, description="the seed the policy was applied with")
    policy_hash: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    violations: dict[str, float] = Field(default_factory=dict, description="(measured - limit) / limit per metric")
    feasible: bool = False
    ppl: float | None = None
    low_ppl: float | None = None
    quality: dict[str, Any] | None = None
    status: str = Field(description="complete | infeasible | pruned | failed | stale | running")
    reason: str | None = None
    cached_from: int | None = Field(None, description="the trial whose result this identical policy reused")
    seconds: dict[str, float] = Field(default_factory=dict)
    checkpoint: str | None = None
    warm_start: bool = False
    node: dict[str, Any] | None = None
    recheck: dict[str, Any] | None = Field(None, description="a close call timed again beside the baseline")
    interference: dict[str, Any] | None = Field(
        None, description="the measurement's interference figures; `attempts` when it was disturbed and repeated"
    )
    plugins: dict[str, list[str]] | None = Field(
        None, description="technique -> [distribution, version] of the plugin that produced the trial's checkpoint"
    )

    @classmethod
    def from_trial(cls, t: Any) -> TrialRecord:
        """Read an Optuna FrozenTrial (any backend wrote it with `record` or `replay`)."""
        attrs = dict(t.user_attrs)
        state = t.state.name.lower()
        return cls(
            number=t.number,
            state=state,
            value=t.value,
            steps=attrs.get("steps", []),
            seed=attrs.get("seed"),
            policy_hash=attrs.get("policy_hash"),
            metrics=attrs.get("metrics", {}),
            violations=attrs.get("violations", {}),
            feasible=bool(attrs.get("feasible")) and state == "complete",
            ppl=attrs.get("ppl"),
            low_ppl=attrs.get("low_ppl"),
            quality=attrs.get("quality"),
            status=attrs.get("status", "stale" if state == "fail" else state),
            reason=attrs.get("reason"),
            cached_from=attrs.get("cached_from"),
            seconds=attrs.get("seconds", {}),
            checkpoint=attrs.get("checkpoint"),
            warm_start=bool(attrs.get("warm_start")),
            node=attrs.get("node"),
            recheck=attrs.get("recheck"),
            interference=attrs.get("interference"),
            plugins=attrs.get("plugins"),
        )

    @property
    def scored(self) -> bool:
        """Measured and evaluated at full quality."""
        return bool(self.quality) and bool(self.metrics)

    @property
    def counted(self) -> bool:
        """Counts toward --trials: complete, pruned, or failed with a reason (not a stale retry)."""
        return self.state in ("complete", "pruned") or (self.state == "fail" and self.reason is not None)


def records(study: Any) -> list[TrialRecord]:
    rows = [TrialRecord.from_trial(t) for t in study.get_trials(deepcopy=False)]
    interrupted = set(study.user_attrs.get("interrupted", []))
    why = {"status": "interrupted", "reason": "interrupted (Ctrl-C); its policy was queued for --resume"}
    # Ctrl-C: not the policy's failure, and run again on resume
    return [r.model_copy(update=why) if r.number in interrupted and r.status == "stale" else r for r in rows]


def best(rows: list[TrialRecord]) -> TrialRecord | None:
    """The feasible trial with the lowest perplexity (ties: the earlier trial)."""
    feasible = [r for r in rows if r.feasible and r.quality and r.ppl is not None]
    return min(feasible, key=lambda r: (r.ppl, r.number)) if feasible else None


def finished_count(study: Any) -> int:
    """Trials that count toward --trials: complete, pruned, or failed with a reason (not stale retries)."""
    import optuna

    S = optuna.trial.TrialState
    return sum(
        1
        for t in study.get_trials(deepcopy=False)
        if t.state in (S.COMPLETE, S.PRUNED) or (t.state == S.FAIL and "reason" in t.user_attrs)
    )


def record(trial: Any, out: TrialOutcome) -> None:
    """Write an outcome into an Optuna trial (a live `optuna.Trial`): user attributes and budget constraints."""
    for key, value in asdict(out).items():
        if value is not None and key != "quality":
            trial.set_user_attr(key, value)
    if out.quality:
        trial.set_user_attr("quality", out.quality)
    for metric, v in out.violations.items():
        trial.set_constraint(metric, v)


def replay(trial: Any, previous: Any) -> None:
    """Give `trial` the result of `previous`, an identical policy already evaluated (the policy cache)."""
    for key, value in previous.user_attrs.items():
        if key != "node":
            trial.set_user_attr(key, value)
    trial.set_user_attr("cached_from", previous.number)
    for metric, v in (previous.user_attrs.get("violations") or {}).items():
        trial.set_constraint(metric, v)


__all__ = ["TrialRecord", "best", "finished_count", "record", "records", "replay"]

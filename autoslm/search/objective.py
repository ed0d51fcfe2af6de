"""The trial: policy -> steps -> (cache?) -> apply -> checkpoint -> measure on target -> budget -> quality.

Backend-neutral and picklable: an `Objective` holds only plain settings; the base model is loaded once per process
on first use and copied for each trial. A backend (Optuna here, Ray Tune later) turns its own trial into a
`policy` dict and records what `evaluate_policy` returns.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoslm.evaluate import Fidelity
from autoslm.search.budget import Budget
from autoslm.search.space import SearchSpace

INFEASIBLE_PPL = 1e6  # objective value for candidates rejected on budget before quality was evaluated


class Pruned(Exception):
    """Low-fidelity quality says this candidate cannot win: stop it early."""


@dataclass
class TrialOutcome:
    """Everything a backend records for one trial."""

    steps: list[dict[str, Any]]
    policy_hash: str
    metrics: dict[str, float] = field(default_factory=dict)
    violations: dict[str, float] = field(default_factory=dict)
    feasible: bool = False
    ppl: float = INFEASIBLE_PPL
    quality: dict[str, Any] = field(default_factory=dict)
    low_ppl: float | None = None
    checkpoint: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    status: str = "complete"  # complete | infeasible | pruned | failed
    reason: str | None = None
    cached_from: int | None = None


def policy_steps(space: SearchSpace, policy: dict[str, Any]) -> list[dict[str, Any]]:
    """Ordered steps from a flat policy {"use:<group>": name|None, "<technique>.<param>": value}."""
    from autoslm.search.space import decode_choice

    steps = []
    chosen = {policy.get(f"use:{'|'.join(g)}") for g in space.groups}
    for t in space.techniques:
        if t.name not in chosen and t.name not in space.required:
            continue
        params = dict(t.fixed)
        for p in t.dims:
            key = f"{t.name}.{p}"
            if key in policy:
                params[p] = decode_choice(policy[key])
        steps.append({"technique": t.name, "params": params})
    return steps


def canonical_hash(steps: list[dict[str, Any]], extra: dict[str, Any]) -> str:
    """Identity of a policy: validated configs (defaults made explicit) + what else determines the result."""
    from autoslm.pipeline import Step, plan

    planned = plan([Step(**s) for s in steps])
    body = {"steps": [[p.name, p.config.model_dump(mode="json")] for p in planned], **extra}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


_BASE: dict[str, Any] = {}


@dataclass
class Objective:
    """Plain, picklable settings of a search; `evaluate_policy` runs one trial in the current process."""

    model: str
    space: SearchSpace
    budget: Budget
    run_dir: str
    seed: int = 0
    fidelity_full: Fidelity = field(default_factory=Fidelity)
    fidelity_low: Fidelity = field(default_factory=lambda: Fidelity.preset("low"))
    target: str = "local"
    target_options: dict[str, Any] = field(default_factory=dict)
    prune_factor: float = 3.0  # prune when low-fidelity ppl exceeds this x the baseline's

    def base(self) -> Any:
        """The base model, loaded once per process (each worker reuses it across trials)."""
        if self.model not in _BASE:
            from autoslm.models import load_model

            _BASE[self.model] = load_model(self.model)
        return _BASE[self.model]

    def hash_extra(self) -> dict[str, Any]:
        return {"model": self.base().fingerprint, "seed": self.seed, "fidelity": self.fidelity_full.model_dump()}

    def apply_policy(self, steps: list[dict[str, Any]]) -> tuple[Any, Any]:
        """A fresh copy of the base model with `steps` applied (deterministic for the seed); (model, loaded)."""
        from autoslm.pipeline import Step, apply_steps
        from autoslm.technique import ApplyContext

        base = self.base()
        lm = _fresh_copy(base)
        ctx = ApplyContext(tokenizer=lm.tokenizer, seed=self.seed, teacher_factory=lambda: base.model)
        return apply_steps(lm.model, [Step(**s) for s in steps], ctx), lm

    def evaluate_policy(
        self,
        steps: list[dict[str, Any]],
        baseline: dict[str, Any] | None,
        report_low: Any = None,
        trial_number: int = 0,
    ) -> TrialOutcome:
        """Run one candidate. `baseline` is None for the baseline itself (no budget check, no pruning)."""
        from autoslm import checkpoint
        from autoslm.evaluate import evaluate
        from autoslm.targets import get_target

        out = TrialOutcome(steps=steps, policy_hash=canonical_hash(steps, self.hash_extra()))
        base = self.base()
        work = Path(self.run_dir) / "trials" / f"{trial_number:04d}"
        try:
            t0 = time.perf_counter()
            model, lm = self.apply_policy(steps)
            out.seconds["apply"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            shutil.rmtree(work, ignore_errors=True)
            checkpoint.save_dir(model, lm.tokenizer, work, steps=steps, base_fingerprint=base.fingerprint)
            measured = get_target(self.target, **self.target_options).measure(work)
            out.metrics = measured.metrics()
            out.checkpoint = str(work)
            out.seconds["measure"] = time.perf_counter() - t0
            if baseline is not None:
                out.violations = self.budget.violations(out.metrics, baseline["metrics"])
                out.feasible = all(v <= 0 for v in out.violations.values())
                if not out.feasible:
                    out.status = "infeasible"
                    return out
            else:
                out.feasible = True
            t0 = time.perf_counter()
            low = evaluate(model, lm.tokenizer, self.fidelity_low)
            out.low_ppl = low.ppl
            out.seconds["quality_low"] = time.perf_counter() - t0
            if baseline is not None:
                if report_low is not None and report_low(low.ppl):
                    raise Pruned(f"low-fidelity perplexity {low.ppl:.1f} is not promising")
                if low.ppl > self.prune_factor * baseline["low_ppl"]:
                    raise Pruned(
                        f"low-fidelity perplexity {low.ppl:.1f} > {self.prune_factor:g}x the baseline's "
                        f"{baseline['low_ppl']:.1f}"
                    )
            t0 = time.perf_counter()
            q = evaluate(model, lm.tokenizer, self.fidelity_full)
            out.seconds["quality"] = time.perf_counter() - t0
            out.ppl, out.quality = q.ppl, q.model_dump()
            return out
        except Pruned as exc:
            out.status, out.reason = "pruned", str(exc)
            return out
        except Exception as exc:  # a technique or measurement failure is a failed trial, not a failed search
            out.status = "failed"
            out.reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
            (Path(self.run_dir) / "logs").mkdir(parents=True, exist_ok=True)
            (Path(self.run_dir) / "logs" / f"trial-{trial_number:04d}.txt").write_text(traceback.format_exc())
            return out


def _fresh_copy(base: Any) -> Any:
    """A private copy of the base model for one trial (reload from its local safetensors dir: fast, exact)."""
    from autoslm.models import LoadedModel, load_model

    lm = load_model(str(base.source_dir))
    return LoadedModel(
        model=lm.model,
        tokenizer=base.tokenizer,
        spec=base.spec,
        source_dir=base.source_dir,
        _fingerprint=base.fingerprint,
    )

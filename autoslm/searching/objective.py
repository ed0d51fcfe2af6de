"""The trial: policy -> steps -> (cache?) -> apply -> checkpoint -> measure on target (close call? time it again
beside the baseline) -> budget -> quality.

Backend-neutral and picklable: an `Objective` holds only plain settings; the base model is loaded once per process
on first use and copied for each trial. A backend (Optuna here, Ray Tune later) turns its own trial into a
`policy` dict and records what `evaluate_policy` returns.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoslm import progress
from autoslm.evaluate import Fidelity
from autoslm.pipeline import resolved_steps
from autoslm.run_dir import RunDir
from autoslm.searching.budget import Budget
from autoslm.searching.space import SearchSpace
from autoslm.targets import DECODE_CONTEXT, THREADS

REFERENCE_TOPK = 64  # the baseline's top-k next-token log-probs per position: the reference of every KLD
REFERENCES: dict[tuple[str, str], Any] = {}  # (reference file, runtime) -> Reference, loaded once per process
INFEASIBLE_PPL = 1e6  # objective value for candidates rejected on budget before quality was evaluated
# a paired recheck whose verdict is still within a third of the close-call margin (5% of the limit by default) is a
# coin flip still: one 4-round pair of the same two GGUFs read 0.38-0.43x on the idle machine (docs/benchmarks.md)
STILL_CLOSE = 1 / 3
# a pair timed because the machine is busy: timed runs per model and round (a quiet close call keeps the settings'
# repeats, 3). 4 rounds x 2 models x 3 runs cost ~6x a single measurement; the rounds' alternation, not the runs
# within a round, is what makes a pair survive load
BUSY_PAIR_REPEATS = 1
# waiting for quiet and repeating disturbed measurements may cost a process what its measuring cost, plus this
WAIT_ALLOWANCE_S = 15.0


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
    seed: int | None = None  # the seed the policy was applied with (a recipe replays it)
    recheck: dict[str, Any] | None = None  # a close call timed again beside the baseline (see _recheck)
    interference: dict[str, Any] | None = None  # what else the target did while timing (see measure_steady)
    plugins: dict[str, list[str]] | None = None  # technique -> [distribution, version] that produced the checkpoint


BASE_MODELS: dict[str, Any] = {}  # model spec -> LoadedModel, loaded once per process
BASE_FILES: dict[str, Any] = {}  # model spec -> ModelFiles (config, tokenizer, weights fingerprint), once per process


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
    target_token: str | None = None
    runtime: str = "torch"
    threads: int = THREADS  # measuring threads, pinned (MeasureSettings.threads)
    context: int = DECODE_CONTEXT  # tokens in the KV cache when decode is timed (MeasureSettings.context)
    prune_factor: float = 3.0  # prune when low-fidelity ppl exceeds this x the baseline's
    recheck_rounds: int = 4  # close calls: rounds of timing the candidate beside the baseline; 0 = never
    recheck_margin: float = 0.15  # a close call: the worst timing violation within +-15% of its limit
    recheck_more: int = 2  # a recheck still within STILL_CLOSE x the margin: up to this many more pairs of rounds
    busy_retries: int = 3  # a measurement the target calls disturbed is repeated up to this many times
    busy_wait_s: float = 120.0  # the longest a timed measurement waits for the machine to be quiet
    measure_timeout_s: float | None = None  # MeasureSettings.timeout_s: None scales the limit to the model
    busy_streak: int = field(default=0, repr=False)  # measurements in a row that never settled (this process)
    measured_s: float = field(default=0.0, repr=False)  # seconds this process spent timing (first tries only)
    load_spent_s: float = field(default=0.0, repr=False)  # seconds it spent waiting for quiet and repeating

    @classmethod
    def from_settings(cls, settings: Any, run_dir: Path, seed: int | None = None) -> Objective:
        """The objective of a search's `SearchSettings` (the one place its fields are read into it); the space is set
        once the base model is known. `seed`: a trial's own, where it differs from the settings'."""
        return cls(
            model=settings.model,
            space=None,  # type: ignore[arg-type]
            budget=settings.limits,
            run_dir=str(run_dir),
            seed=settings.seed if seed is None else seed,
            fidelity_full=Fidelity.preset(settings.fidelity),
            target=settings.target,
            target_token=settings.target_token,
            runtime=settings.runtime,
            threads=settings.threads,
            context=settings.context,
            recheck_rounds=settings.recheck_rounds,
            recheck_margin=settings.recheck_margin,
            busy_retries=settings.busy_retries,
            busy_wait_s=settings.busy_wait,
            measure_timeout_s=settings.measure_timeout,
        )

    def get_target(self) -> Any:
        from autoslm.targets import get_target

        return get_target(self.target, token=self.target_token)

    def measure_settings(self) -> Any:
        from autoslm.targets import MeasureSettings

        return MeasureSettings(
            runtime=self.runtime, threads=self.threads, context=self.context, timeout_s=self.measure_timeout_s
        )

    def base(self) -> Any:
        """The base model loaded into torch, once per process (each worker reuses it across trials), on the first
        policy that needs it: a llama.cpp search whose policies only quantize never loads it (`files`)."""
        if self.model not in BASE_MODELS:
            from autoslm.models import load_model

            BASE_MODELS[self.model] = load_model(self.model)
        return BASE_MODELS[self.model]

    def files(self) -> Any:
        """The base model as its files (`ModelFiles`: config, tokenizer, weights fingerprint), once per process."""
        if self.model not in BASE_FILES:
            from autoslm.models import load_files

            BASE_FILES[self.model] = load_files(self.model)
        return BASE_FILES[self.model]

    @property
    def fingerprint(self) -> str:
        """The base model's identity in trial hashes, checkpoints and the recipe: its weight files' sha256
        (`models.files_fingerprint`), the same whether or not this process loads it into torch."""
        return str(self.files().fingerprint)

    def hash_extra(self) -> dict[str, Any]:
        extra = {"model": self.fingerprint, "seed": self.seed, "fidelity": self.fidelity_full.model_dump()}
        return extra if self.runtime == "torch" else {**extra, "runtime": self.runtime}

    def identify(self, steps: list[dict[str, Any]]) -> tuple[list[Any], str]:
        """Validate a policy's steps once (for the runtime too): (planned steps, canonical hash: the cache's key)."""
        from autoslm.pipeline import Step, plan
        from autoslm.runtimes import check_policy
        from autoslm.searching.policy import canonical_hash

        planned = plan([Step(**s) for s in steps])
        check_policy(self.runtime, planned)
        return planned, canonical_hash(planned, self.hash_extra())

    def save(self, model: Any, tokenizer: Any, directory: Path, steps: list[dict[str, Any]], planned: list[Any]) -> Any:
        """Write the candidate as the runtime loads it (safetensors for torch, a GGUF for llama.cpp)."""
        from autoslm.runtimes import get_runtime

        runtime = get_runtime(self.runtime)
        runtime.save(model, tokenizer, directory, planned, steps=steps, base_fingerprint=self.fingerprint)
        return runtime

    def apply_policy(self, steps: list[dict[str, Any]], planned: list[Any] | None = None) -> tuple[Any, Any]:
        """The base model with `steps` applied (deterministic for the seed); (model, loaded). Three cases, from the
        cheapest:
        - the runtime `takes_files` and no step `needs_torch_model` (llama.cpp's quantization, quant.mixed, and the
          baseline): the model's files (`ModelFiles`, as both), which the runtime exports itself: nothing kept in
          torch (quant.mixed loads the model for its sensitivity table alone, and lets it go);
        - every step belongs to the runtime (a runtime that cannot take files): the base model itself, one fp32
          copy less in the search process (538 MB for SmolLM2-135M, 2 GB for a 0.5B);
        - a step changes the torch model: a fresh copy."""
        from autoslm.pipeline import Step, apply_planned, plan
        from autoslm.runtimes import works_from_files
        from autoslm.technique import ApplyContext

        planned = planned or plan([Step(**s) for s in steps])
        if works_from_files(self.runtime, [p.entry.cls for p in planned]):
            files = self.files()
            ctx = ApplyContext(tokenizer=files.tokenizer, seed=self.seed, run_dir=Path(self.run_dir))
            return apply_planned(files, planned, ctx), files
        base = self.base()
        reads_only = all(getattr(p.entry.cls, "runtime", None) not in (None, "torch") for p in planned)
        lm = base if reads_only else _fresh_copy(base)
        ctx = ApplyContext(
            tokenizer=lm.tokenizer, seed=self.seed, teacher_factory=lambda: base.model, run_dir=Path(self.run_dir)
        )
        return apply_planned(lm.model, planned, ctx), lm

    def evaluate_policy(
        self,
        steps: list[dict[str, Any]],
        baseline: dict[str, Any] | None,
        report_low: Any = None,
        trial_number: int | str = 0,
        identity: tuple[list[Any], str] | None = None,
        incumbent: float | None = 0.0,
        judge: bool = True,
    ) -> TrialOutcome:
        """Run one candidate. `baseline` is None for the baseline itself (no budget check, no pruning).
        `identity`: what `identify(steps)` returned, when the caller already validated the policy.
        `incumbent`: the low-fidelity perplexity of the best candidate within budget so far. None (none yet): no
        quality rule prunes -- a tight budget's first feasible candidate is worth finishing however poor. A number:
        the hard rule prunes only what is also worse than it (it cannot win). 0.0 (unknown): the hard rule alone.
        `judge=False` (a budget's reference preset): measured and evaluated in full, never judged or pruned."""
        planned, policy_hash = identity or self.identify(steps)
        out = TrialOutcome(steps=steps, policy_hash=policy_hash, seed=self.seed)
        out.plugins = {p.name: [p.entry.dist, p.entry.version] for p in planned}
        work = RunDir(self.run_dir).trial(trial_number)
        label = "baseline" if baseline is None else (f"trial {trial_number}" if judge else "preset")
        try:
            t0 = time.perf_counter()
            before = [p.config for p in planned]
            with progress.phase(f"{label}: applying the policy"):
                model, lm = self.apply_policy(steps, planned)
            out.steps = resolved_steps(steps, before, planned)  # parameters a technique derived are recorded too
            out.seconds["apply"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            shutil.rmtree(work, ignore_errors=True)
            with progress.phase(f"{label}: saving for {self.runtime}"):
                runtime = self.save(model, lm.tokenizer, work, steps, planned)
            out.checkpoint = str(work)
            with progress.phase(f"{label}: measuring on {self.target}"):
                self.measure_and_judge(out, self.get_target(), work, baseline if judge else None)
            out.seconds["measure"] = time.perf_counter() - t0
            if baseline is not None and judge:
                out.feasible = all(v <= 0 for v in out.violations.values())
                if not out.feasible:
                    out.status = "infeasible"
                    return out
            else:
                out.feasible = True
            t0 = time.perf_counter()
            reference = self.reference()
            with progress.phase(f"{label}: evaluating (low fidelity)"):
                low = runtime.evaluate(model, lm.tokenizer, work, self.fidelity_low, reference=reference)
            out.low_ppl = low.ppl
            out.seconds["quality_low"] = time.perf_counter() - t0
            if baseline is not None and judge and incumbent is not None:
                if report_low is not None and report_low(low.ppl):
                    raise Pruned(f"low-fidelity perplexity {low.ppl:.1f} is not promising")
                if low.ppl > max(self.prune_factor * baseline["low_ppl"], incumbent):
                    raise Pruned(
                        f"low-fidelity perplexity {low.ppl:.1f} > {self.prune_factor:g}x the baseline's "
                        f"{baseline['low_ppl']:.1f}"
                    )
            t0 = time.perf_counter()
            keep = REFERENCE_TOPK if baseline is None else 0  # the baseline's distribution: the KLD reference
            with progress.phase(f"{label}: evaluating"):
                q = evaluate_on(runtime, model, lm.tokenizer, work, self.fidelity_full, reference, keep, prior=low)
            if q.reference is not None:
                q.reference.save(self.reference_path())
            out.seconds["quality"] = time.perf_counter() - t0
            out.ppl, out.quality = q.ppl, q.model_dump()
            return out
        except Pruned as exc:
            out.status, out.reason = "pruned", str(exc)
            return out
        except Exception as exc:  # a technique or measurement failure is a failed trial, not a failed search
            out.status = "failed"
            out.reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
            log = RunDir(self.run_dir).trial_log(trial_number)
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text(traceback.format_exc())
            return out

    def violations(self, metrics: dict[str, float], baseline: dict[str, Any]) -> dict[str, float]:
        """The budget's verdict: against the baseline's metrics and the reference presets measured beside it."""
        from autoslm.searching.references import reference_metrics

        return self.budget.violations(metrics, baseline["metrics"], reference_metrics(baseline))

    def measure_and_judge(self, out: TrialOutcome, target: Any, work: Path, baseline: dict[str, Any] | None) -> None:
        """Measure the checkpoint in `work` (again while the target is busy) into `out.metrics`; with a `baseline`,
        judge it (`out.violations`), timing it again beside the baseline when the verdict is a close call or the
        machine is busy (the candidate's measurement, or the baseline's, stayed disturbed), and always beside the
        preset a budget's timing limits name (`pair_partner`). A candidate whose files
        already break a size or bits-per-weight limit is judged on them, without being timed."""
        if baseline is not None and self._over_on_disk(out, work, baseline):
            return
        measurement, out.interference = self.measure_steady(target, work)
        out.metrics = measurement.metrics()
        if baseline is None:
            return
        figures = (out.interference, baseline.get("interference"))
        busy = any(bool((f or {}).get("disturbed")) for f in figures)
        out.violations = self.violations(out.metrics, baseline)
        partner = self.pair_partner()
        if busy and partner is None and self._clear_under_load(out, baseline):
            return
        if self.is_close_call(out.violations) or (self._times(out.violations) and (busy or partner is not None)):
            # a close call on a machine that settled waits for quiet again; a busy machine is paired at once
            if busy:  # one timed run per model and round: the pair is the measurement, not a check of one
                self._recheck(out, target, work, baseline, partner, repeats=BUSY_PAIR_REPEATS)
            else:
                self._recheck(out, target, work, baseline, partner, quiet_wait_s=self._quiet_wait_s())

    def _clear_under_load(self, out: TrialOutcome, baseline: dict[str, Any]) -> bool:
        """Other work only slows a timing down, so a candidate timed while the machine was busy, beside a baseline
        timed while it was quiet, is at most as slow as it read. When that reading already keeps every timing limit
        by more than the close-call margin (idle noise cannot turn it either), the verdict stands without the pair
        (the pair under load costs ~10 timed runs, each slowed by the load). Its figures stay what they were: an
        upper bound, and `interference` says so."""
        from autoslm.metrics import timing_metrics

        if (baseline.get("interference") or {}).get("disturbed"):
            return False  # a slow baseline reading makes every ratio look better than it is
        timing = [v for m, v in out.violations.items() if m in timing_metrics()]
        if not timing or max(out.violations.values()) > 0 or max(timing) > -self.recheck_margin:
            return False
        out.interference = {**(out.interference or {}), "upper_bound": True}
        return True

    def pair_partner(self) -> str | None:
        """The preset every timing limit of the budget is written against (`decode_ms<=Q3_K_M`), or None. That
        preset was timed once, at the study's start, and a ratio of two single measurements of a model decoding a
        token in 6 ms swings by +-30% here (docs/benchmarks.md); so each candidate that its files do not already
        rule out is timed beside the preset's own checkpoint (RUN/references/NAME), which answers "no slower than
        the preset?" directly, and judged on that pair. None too where this node has no copy of the preset's
        checkpoint (a cluster worker without the driver's run directory): close calls are then paired with the
        baseline, which every node saves for itself."""
        from autoslm import checkpoint
        from autoslm.metrics import timing_metrics
        from autoslm.searching.references import reference_checkpoint

        names = {lim.reference for lim in (self.budget.limits if self.budget else ()) if lim.metric in timing_metrics()}
        if len(names) != 1 or None in names:
            return None
        name = str(next(iter(names)))
        return name if (reference_checkpoint(self.run_dir, name) / checkpoint.MANIFEST).is_file() else None

    def _over_on_disk(self, out: TrialOutcome, work: Path, baseline: dict[str, Any]) -> bool:
        """Size and bits per weight are read from the files, as every target reports them (the agent measures the
        same files): when they already break the budget, `out` gets them and their violations, and timing the
        candidate (~10 s here) is skipped."""
        from autoslm import checkpoint
        from autoslm.searching.budget import Budget
        from autoslm.searching.references import reference_metrics

        files = {"size_mb": checkpoint.weights_size_mb, "bpw": checkpoint.weights_bpw}
        limits = tuple(lim for lim in self.budget.limits if lim.metric in files) if self.budget else ()
        figures = {m: files[m](work) for m in {lim.metric for lim in limits}}
        if not limits or any(v is None for v in figures.values()):
            return False
        violations = Budget(limits=limits).violations(figures, baseline["metrics"], reference_metrics(baseline))
        if max(violations.values()) <= 0:
            return False
        out.metrics, out.violations = figures, violations
        return True

    def measure_steady(self, target: Any, work: Path) -> tuple[Any, dict[str, Any] | None]:
        """Measure once the machine is quiet; while the target says the measurement was disturbed anyway (other
        processes used the CPU, the hypervisor stole time: `targets/interference.py`), measure again, `busy_retries`
        times at most. Only when the budget limits a timing metric, and not on a machine known busy (below). The
        target waits for quiet itself, up to `busy_wait_s` (`MeasureSettings.quiet_wait_s`, so a
        remote agent waits on its own device); a measurement that waited that long in vain is not repeated (the
        machine is busy, not briefly disturbed), and one from a target that does not wait is repeated after a
        back-off (5 s, doubling). Returns the least disturbed measurement and its figures (with `attempts`, every
        try's figures, when there was more than one; `disturbed` stays true when the machine never settled).

        Once the machine is known busy (a trial's measurement never settled, or the baseline's: `busy_streak`), a
        trial is measured once without waiting and with one timed run (memory and size; its timing is replaced by
        the paired one `measure_and_judge` makes next): a loaded machine slows the search, it does not stall it.
        The first such measurement that comes back undisturbed ends that mode, and is taken again in full."""
        if self._known_busy():
            quick = self.measure_settings().model_copy(update={"quiet_wait_s": 0.0, "repeats": 1})
            first = target.measure(work, quick)
            if _disturbed(first):
                figures = dict(first.interference) if first.interference else None
                return first, {**(figures or {}), "known_busy": True}
            self.busy_streak = 0  # seen quiet: back to single timings
        patient = self._patient()
        tries = [self._measure(target, work, self._quiet_wait_s(), first=True)]
        backoff = 5.0
        while patient and _disturbed(tries[-1]) and len(tries) <= self.busy_retries:
            gate = (tries[-1].interference or {}).get("quiet")
            if gate is False:
                break  # it waited as long as it could for a quiet moment and found none
            wait = self._quiet_wait_s()
            if wait <= 0:
                break  # waiting and repeating have cost as much as measuring: judge it as it is (paired next)
            if gate is None:  # the target does not wait for quiet: back off here
                pause = min(backoff, wait)
                time.sleep(pause)
                self.load_spent_s += pause
                backoff *= 2
            tries.append(self._measure(target, work, wait, first=False))
        chosen = min(tries, key=lambda m: (_disturbed(m), (m.interference or {}).get("other_cores", 0.0)))
        self.busy_streak = self.busy_streak + 1 if _disturbed(chosen) else 0
        figures = dict(chosen.interference) if chosen.interference else None
        if len(tries) > 1:
            figures = {**(figures or {}), "attempts": [m.interference for m in tries]}
        return chosen, figures

    def _patient(self) -> bool:
        """Whether to wait for a quiet machine and repeat disturbed measurements: the budget limits a timing metric
        (memory and size do not depend on other work), `busy_retries` > 0, and the machine is not known busy."""
        timed = self.budget is not None and self.budget.timed
        return timed and self.busy_retries > 0 and self.busy_streak < 1

    def _known_busy(self) -> bool:
        """A timing budget, retries on, and the last measurement (a trial's, or the baseline's) never settled: each
        trial goes straight to its paired timing until a measurement comes back undisturbed. (It waited for two such
        trials before: a loaded `make search` trial cost ~8x an idle one.)"""
        timed = self.budget is not None and self.budget.timed
        return timed and self.busy_retries > 0 and self.busy_streak >= 1

    def _quiet_wait_s(self) -> float:
        """How long the target may wait for quiet before timing (`MeasureSettings.quiet_wait_s`): `busy_wait_s` at
        most, and never more than the waiting account allows. Waiting for quiet and repeating disturbed
        measurements together may cost this process as much time as its measuring itself (first tries), plus
        WAIT_ALLOWANCE_S: on a machine that stays busy, the search then measures at about twice its idle cost instead
        of waiting 120 s per measurement (issue #32: a loaded pass cost 2.94x an idle one with a flat 120 s)."""
        if not self._patient():
            return 0.0
        left = WAIT_ALLOWANCE_S + self.measured_s - self.load_spent_s
        return max(0.0, min(self.busy_wait_s, left))

    def _measure(self, target: Any, work: Path, quiet_wait_s: float, first: bool) -> Any:
        """One `target.measure`, waiting up to `quiet_wait_s` for quiet first, booked in the waiting account: the
        wait is load cost; the measuring is idle cost on a first try and load cost on a repeat."""
        start = time.perf_counter()
        measurement = target.measure(work, self.measure_settings().model_copy(update={"quiet_wait_s": quiet_wait_s}))
        self._book(time.perf_counter() - start, measurement.interference, first)
        return measurement

    def _book(self, seconds: float, figures: dict[str, Any] | None, first: bool) -> None:
        waited = min(seconds, float((figures or {}).get("waited_s") or 0.0))
        self.load_spent_s += waited
        if first:
            self.measured_s += seconds - waited
        else:
            self.load_spent_s += seconds - waited

    def _times(self, violations: dict[str, float]) -> bool:
        """A re-timing beside the baseline could change the verdict: rechecks are on, the budget limits a timing
        metric, and memory and size (steady to about 1%) do not already break it."""
        from autoslm.metrics import timing_metrics

        timed = any(m in timing_metrics() for m in violations)
        steady = [v for m, v in violations.items() if m not in timing_metrics()]
        return self.recheck_rounds > 0 and timed and max(steady, default=-1.0) <= 0

    def is_close_call(self, violations: dict[str, float]) -> bool:
        """The verdict hangs on timing noise: the worst timing violation lies within the margin of its limit (and
        `_times`: a re-timing could change it)."""
        from autoslm.metrics import timing_metrics

        timing = [v for m, v in violations.items() if m in timing_metrics()]
        return self._times(violations) and abs(max(timing)) <= self.recheck_margin

    def _recheck(
        self,
        out: TrialOutcome,
        target: Any,
        work: Path,
        baseline: dict[str, Any],
        partner: str | None = None,
        quiet_wait_s: float = 0.0,
        repeats: int | None = None,
    ) -> None:
        """Time the candidate against the baseline, alternating them `recheck_rounds` times, and judge on that.

        One measurement of decode ms varies by 10-16% between processes here (docs/benchmarks.md) and the machine
        drifts further over a long search, so a verdict within that of the limit is a coin flip. The pair's
        timing ratios are immune to both. A limit relative to the partner judges the ratio; the trial's timing
        figures are the ratio x the partner's reading in the same pair (`_paired_violations`), never a stored
        reading that other work may have disturbed. Memory and size keep the first measurement (they vary by about
        1%). `repeats`: timed runs per model and round (a busy machine's pair: BUSY_PAIR_REPEATS). `recheck` keeps
        the first figures and the pair, and says where the figures came from.
        """
        settings = self.measure_settings().model_copy(update={"quiet_wait_s": quiet_wait_s})
        if repeats is not None:
            settings = settings.model_copy(update={"repeats": repeats})
        from autoslm.searching.references import reference_checkpoint

        other = self.baseline_checkpoint() if partner is None else reference_checkpoint(self.run_dir, partner)
        frame = baseline["metrics"] if partner is None else baseline["references"][partner]["metrics"]
        pair = target.measure_pair(work, other, self.recheck_rounds, settings)
        for _ in range(self.recheck_more):  # still a coin flip: more rounds, judged on all of them
            judged = self._paired_violations(
                self._paired(out.metrics, pair, frame), self._paired(out.metrics, pair, pair.baseline), baseline
            )
            timing = [v for m, v in judged.items() if m in pair.ratios]
            if not timing or abs(max(timing)) > self.recheck_margin * STILL_CLOSE:
                break
            pair = pair.extended(target.measure_pair(work, other, self.recheck_rounds, settings))
        self.load_spent_s += float((pair.interference or {}).get("waited_s") or 0.0)  # every set of rounds waited
        first = dict(out.metrics)
        out.metrics = self._paired(first, pair, pair.baseline)
        out.violations = self._paired_violations(self._paired(first, pair, frame), out.metrics, baseline)
        out.recheck = {
            "against": partner or "baseline",
            "rounds": pair.rounds,
            "first": first,
            "first_violations": self.violations(first, baseline),
            "figures": f"ratio x the {partner or 'baseline'}'s reading in the same pair",
            **pair.model_dump(exclude={"rounds"}),
        }

    @staticmethod
    def _paired(metrics: dict[str, float], pair: Any, frame: dict[str, float]) -> dict[str, float]:
        """`metrics` with each paired timing replaced by its ratio x `frame`'s figure for it: the partner's reading in
        the same pair (what the candidate took while it was timed: the trial's figures), or the partner's stored
        figure (the frame a relative limit is judged in: that judges the ratio itself)."""
        return {**metrics, **{m: r * frame[m] for m, r in pair.ratios.items() if m in frame}}

    def _paired_violations(
        self, in_frame: dict[str, float], absolute: dict[str, float], baseline: dict[str, Any]
    ) -> dict[str, float]:
        """A paired trial's verdict: a limit relative to the baseline or to a preset judges the pair's ratio (the
        figures in the stored frame); an absolute limit (decode_ms<=18) judges the figures read in the pair. A stored
        reading taken while the machine was busy (a baseline read at 1032 ms that read 164 ms inside a pair) then
        moves neither: the ratio does not depend on it, and the absolute figure never multiplies it."""
        relative = self.violations(in_frame, baseline)
        plain = self.violations(absolute, baseline)
        kinds = {lim.metric: lim.relative for lim in self.budget.limits}
        return {m: relative[m] if kinds.get(m, True) else plain[m] for m in relative}

    def reference_path(self) -> Path:
        return RunDir(self.run_dir).reference_topk

    def reference(self) -> Any:
        """The baseline's next-token distribution (top-k per position), once the baseline was evaluated."""
        from autoslm.evaluate import Reference

        path = self.reference_path()
        key = (str(path.resolve()), self.runtime)
        if key not in REFERENCES and path.is_file():
            REFERENCES[key] = Reference.load(path)
        return REFERENCES.get(key)

    def baseline_checkpoint(self) -> Path:
        """The unmodified model saved in the run directory (made once; each node of a cluster makes its own)."""
        from autoslm import checkpoint

        directory = RunDir(self.run_dir).baseline
        if (directory / checkpoint.MANIFEST).is_file():
            return directory
        tmp = directory.with_name(f".baseline-{socket.gethostname()}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        model, lm = self.apply_policy([])
        self.save(model, lm.tokenizer, tmp, [], [])
        try:
            tmp.rename(directory)  # atomic: a reader never sees half a checkpoint, so one found is complete
        except OSError:  # another worker finished first
            shutil.rmtree(tmp, ignore_errors=True)
        return directory


def _disturbed(measurement: Any) -> bool:
    return bool((getattr(measurement, "interference", None) or {}).get("disturbed"))


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


def evaluate_on(
    runtime: Any, model: Any, tokenizer: Any, work: Path, fidelity: Any, reference: Any, keep_topk: int, prior: Any
) -> Any:
    """`runtime.evaluate`, handing it the low-fidelity evaluation to build on when it takes one (`prior`: the
    built-in runtimes do; a plugin runtime written before `prior` existed is called without it)."""
    import inspect

    if "prior" in inspect.signature(runtime.evaluate).parameters:
        return runtime.evaluate(model, tokenizer, work, fidelity, reference=reference, keep_topk=keep_topk, prior=prior)
    return runtime.evaluate(model, tokenizer, work, fidelity, reference=reference, keep_topk=keep_topk)

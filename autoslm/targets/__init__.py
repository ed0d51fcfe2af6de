"""Where candidates are measured. A Target takes a checkpoint directory and returns a Measurement.

Measuring a saved checkpoint (not an object in this process) is what makes local and remote targets the same:
the local target loads it in a fresh process, a remote agent (`agent.py`, the server beside its client
`remote.py`) receives it over HTTP; both hand it to the runtime `MeasureSettings.runtime` names
(`autoslm/runtimes/`).

Targets form a table keyed by the scheme of a `--target` spec (`local`, `http`, `https`), filled through the
`register_targets` hook: a new kind of device is one module with a `Target` subclass plus one registration.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from autoslm.errors import UserError

# threads of every measurement, evaluation and quantization unless told: this machine's 2 cores (a phone's big cores)
THREADS = 2
# tokens in the KV cache when decode is timed unless told (`--context`): decode right after a short prompt
DECODE_CONTEXT = 16
MAX_CONTEXT = 32768  # the deepest cache a measurement fills (an agent holds it in memory: bounded)


class MeasureSettings(BaseModel):
    """How to measure. Fixed threads, warm-up and repeats keep figures comparable between candidates."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    runtime: str = Field("torch", max_length=64, description="what executes the checkpoint (autoslm/runtimes/)")
    threads: int = Field(THREADS, ge=1, le=1024, description="threads, pinned for every measurement")
    prompt_tokens: int = Field(128, ge=1, le=8192, description="prompt length for prefill_ms")
    context: int = Field(
        DECODE_CONTEXT,
        ge=1,
        le=MAX_CONTEXT,
        description="tokens in the KV cache when decode is timed (a prompt of this many tokens first, as "
        f"`llama-bench -d N`); memory_mb is the peak with that cache. Default {DECODE_CONTEXT}: right after a short "
        "prompt. Budgets then mean 'at N tokens of context'",
    )
    decode_tokens: int = Field(32, ge=2, le=2048, description="greedy tokens generated per decode run")
    repeats: int = Field(3, ge=1, le=100, description="timed runs after warm-up (median and p90 over all of them)")
    warmup: int = Field(1, ge=0, le=20, description="untimed runs first")
    seed: int = Field(0, ge=0, lt=2**32, description="seed of the prompts' tokens")
    quiet_wait_s: float = Field(
        0.0,
        ge=0,
        le=300,
        description="before timing, wait up to this long for the machine to be quiet for a few seconds "
        "(targets/interference.py); 0 times at once",
    )
    timeout_s: float | None = Field(
        None,
        gt=0,
        le=7 * 86400,
        description="kill a measurement after this many seconds; default: 600 s, more for big models and paired "
        "rounds (targets/local.py: timeout_for); an agent caps it at its own --timeout-s",
    )


class Measurement(BaseModel):
    """What a target measured for one checkpoint. Names match the budget names. A figure a runtime measures beyond
    these fields is kept (`extra="allow"`): `metrics()` returns it where a plugin declared it (`register_metrics`)."""

    model_config = ConfigDict(extra="allow")

    decode_ms: float = Field(description="median ms per generated token, batch 1, greedy, KV cache")
    decode_p90_ms: float
    prefill_ms: float = Field(description="median ms for a forward pass over the prompt")
    prompt_tokens: int
    context: int = Field(DECODE_CONTEXT, description="tokens in the KV cache when decode was timed")
    memory_mb: float = Field(description="peak resident memory of the loaded model while in use, with its KV cache")
    size_mb: float = Field(description="weight files on disk")
    bpw: float | None = Field(None, description="bits per weight of the weight tensors")
    interference: dict[str, Any] | None = Field(
        None, description="what else the device did while timing (targets/interference.py); None: not measured"
    )
    load_s: float
    target: dict[str, str | int] = Field(description="fingerprint of the device that measured")

    def metrics(self) -> dict[str, float]:
        """The figures budgets judge: every field named in the metrics table."""
        from autoslm.metrics import all_metrics

        values = self.model_dump()
        return {name: float(values[name]) for name in all_metrics() if isinstance(values.get(name), int | float)}


class PairMeasurement(BaseModel):
    """A candidate and the baseline measured alternately, round by round: their timing ratios.

    Noise that comes and goes (other load, the machine's drift) hits both halves of a round alike and cancels in
    the ratio, which is what a relative budget (`decode_ms<=0.6x`) asks about.
    """

    rounds: int
    how: str = Field(description="'one process' (both loaded side by side) or 'fresh processes' (pairs of measure)")
    ratios: dict[str, float] = Field(description="per timing metric: median over rounds of candidate / baseline")
    pair_ratios: dict[str, list[float]]
    candidate: dict[str, float] = Field(description="per timing metric: the candidate's median over rounds")
    baseline: dict[str, float]
    interference: dict[str, Any] | None = Field(
        None, description="what else the device did during the rounds (and how long it waited for quiet first)"
    )

    @classmethod
    def from_rounds(
        cls, baseline: list[dict[str, float]], candidate: list[dict[str, float]], how: str
    ) -> PairMeasurement:
        import statistics

        from autoslm.metrics import timing_metrics

        timing = [m for m in timing_metrics() if m in baseline[0]]
        pair_ratios = {m: [c[m] / b[m] for b, c in zip(baseline, candidate, strict=True)] for m in timing}
        return cls(
            rounds=len(baseline),
            how=how,
            ratios={m: statistics.median(r) for m, r in pair_ratios.items()},
            pair_ratios=pair_ratios,
            candidate={m: statistics.median(c[m] for c in candidate) for m in timing},
            baseline={m: statistics.median(b[m] for b in baseline) for m in timing},
        )

    def extended(self, more: PairMeasurement) -> PairMeasurement:
        """This pair and `more` (the same two checkpoints timed again) as one: ratios are medians over all rounds;
        the candidate's and the baseline's own figures, kept only as medians, are averaged weighting by rounds;
        the interference figures are the later pair's, with the seconds both waited for quiet added up."""
        import statistics

        n, m = self.rounds, more.rounds
        pair_ratios = {k: v + more.pair_ratios.get(k, []) for k, v in self.pair_ratios.items()}
        interference = more.interference
        if self.interference and more.interference:
            waited = float(self.interference.get("waited_s") or 0) + float(more.interference.get("waited_s") or 0)
            interference = {**more.interference, "waited_s": waited}
        return self.model_copy(
            update={
                "rounds": n + m,
                "ratios": {k: statistics.median(v) for k, v in pair_ratios.items()},
                "pair_ratios": pair_ratios,
                "candidate": {k: (v * n + more.candidate.get(k, v) * m) / (n + m) for k, v in self.candidate.items()},
                "baseline": {k: (v * n + more.baseline.get(k, v) * m) / (n + m) for k, v in self.baseline.items()},
                "interference": interference,
            }
        )


def checkpoint_dir(path: Path | str) -> Path:
    """The checkpoint directory a target is asked to measure, or a UserError saying what to give instead."""
    directory = Path(path)
    if not directory.is_dir():
        raise UserError(f"checkpoint '{directory}' is not a directory: give a model or checkpoint directory")
    return directory


class Target(ABC):
    """A device that can measure a checkpoint directory.

    `schemes`: the `--target` specs it serves (`local`, or the part before `://`); `kind`: what a recipe records.
    """

    schemes: ClassVar[tuple[str, ...]]
    kind: ClassVar[str]
    help: ClassVar[str] = ""

    @classmethod
    def from_spec(cls, spec: str, token: str | None = None) -> Target:
        """Build the target a `--target` spec names (no network call yet); UserError when the spec is unusable.
        The default suits a target without options."""
        return cls()

    @abstractmethod
    def fingerprint(self) -> dict[str, str | int]:
        """Identity of the device (CPU, cores, torch version...) recorded with every measurement."""

    @abstractmethod
    def measure(self, checkpoint: Path, settings: MeasureSettings | None = None) -> Measurement:
        """Load `checkpoint` on the device, run it, return latency and memory figures."""

    def measure_pair(
        self, candidate: Path, baseline: Path, rounds: int, settings: MeasureSettings | None = None
    ) -> PairMeasurement:
        """Timing of `candidate` relative to `baseline`, the two measured alternately `rounds` times.

        This default runs ordinary measurements back to back (baseline, candidate); a target that can hold both
        models at once does better (the local target alternates them inside one process).
        """
        base, cand = [], []
        for _ in range(rounds):
            base.append(self.measure(baseline, settings).metrics())
            cand.append(self.measure(candidate, settings).metrics())
        return PairMeasurement.from_rounds(base, cand, how="fresh processes")


def scheme_of(spec: str) -> str:
    return spec.split("://", 1)[0].lower() if "://" in spec else spec


def get_target(spec: str = "local", token: str | None = None) -> Target:
    """The target a spec names, from the targets table: `local` (this machine, a fresh process per measurement),
    `http(s)://host:port` (a remote agent), or whatever a plugin registered."""
    from autoslm.plugins import get_registry

    registry = get_registry()
    if scheme_of(spec) not in registry.targets:
        known = "; ".join(f"{s} ({e.obj.help})" if e.obj.help else s for s, e in sorted(registry.targets.items()))
        raise UserError(f"--target '{spec}' is not understood: use one of {known}")
    return registry.targets[scheme_of(spec)].obj.from_spec(spec, token=token)

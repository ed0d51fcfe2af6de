"""Where candidates are measured. A Target takes a checkpoint directory and returns a Measurement.

Measuring a saved checkpoint (not an object in this process) is what makes local and remote targets the same:
the local target loads it in a fresh process, a remote agent receives it over HTTP; both run `measure.py`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from autoslm.errors import UserError


class MeasureSettings(BaseModel):
    """How to measure. Fixed threads, warm-up and repeats keep figures comparable between candidates."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    threads: int = Field(2, ge=1, description="torch threads, pinned for every measurement")
    prompt_tokens: int = Field(128, ge=1, description="prompt length for prefill_ms")
    decode_tokens: int = Field(32, ge=2, description="greedy tokens generated per decode run")
    repeats: int = Field(3, ge=1, description="timed runs after warm-up (median and p90 over all of them)")
    warmup: int = Field(1, ge=0, description="untimed runs first")
    seed: int = 0


class Measurement(BaseModel):
    """What a target measured for one checkpoint. Names match the budget names."""

    decode_ms: float = Field(description="median ms per generated token, batch 1, greedy, KV cache")
    decode_p90_ms: float
    prefill_ms: float = Field(description="median ms for a forward pass over the prompt")
    prompt_tokens: int
    memory_mb: float = Field(description="peak resident memory of the loaded model while in use")
    size_mb: float = Field(description="weight files on disk")
    load_s: float
    target: dict[str, str | int] = Field(description="fingerprint of the device that measured")

    def metrics(self) -> dict[str, float]:
        return {
            "decode_ms": self.decode_ms,
            "decode_p90_ms": self.decode_p90_ms,
            "prefill_ms": self.prefill_ms,
            "memory_mb": self.memory_mb,
            "size_mb": self.size_mb,
        }


TIMING = ("decode_ms", "decode_p90_ms", "prefill_ms")


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

    @classmethod
    def from_rounds(
        cls, baseline: list[dict[str, float]], candidate: list[dict[str, float]], how: str
    ) -> PairMeasurement:
        import statistics

        pair_ratios = {m: [c[m] / b[m] for b, c in zip(baseline, candidate, strict=True)] for m in TIMING}
        return cls(
            rounds=len(baseline),
            how=how,
            ratios={m: statistics.median(r) for m, r in pair_ratios.items()},
            pair_ratios=pair_ratios,
            candidate={m: statistics.median(c[m] for c in candidate) for m in TIMING},
            baseline={m: statistics.median(b[m] for b in baseline) for m in TIMING},
        )


def checkpoint_dir(path: Path | str) -> Path:
    """The checkpoint directory a target is asked to measure, or a UserError saying what to give instead."""
    directory = Path(path)
    if not directory.is_dir():
        raise UserError(f"checkpoint '{directory}' is not a directory: give a model or checkpoint directory")
    return directory


class Target(ABC):
    """A device that can measure a checkpoint directory."""

    kind: str

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


def get_target(spec: str = "local", **options: object) -> Target:
    """`local` (this machine, a fresh process per measurement) or `http(s)://host:port` (a remote agent)."""
    if spec == "local":
        from autoslm.targets.local import LocalTarget

        return LocalTarget(**options)  # type: ignore[arg-type]
    if spec.startswith(("http://", "https://")):
        from autoslm.targets.remote import RemoteTarget

        return RemoteTarget(spec, **options)  # type: ignore[arg-type]
    raise UserError(f"unknown target '{spec}': use local, or http://HOST:PORT of a running `autoslm agent`")

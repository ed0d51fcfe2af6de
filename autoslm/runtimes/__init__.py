"""Runtimes: what executes a checkpoint on a target. A target is a device plus the runtime that runs the model there.

A `Runtime` measures a checkpoint directory inside the measuring process (the local target's fresh process, or the
agent's on a remote device): decode and prefill timings, memory in use, size. Runtimes form a table keyed by name
(`--runtime NAME`, `MeasureSettings.runtime`), filled through the `register_runtimes` hook; the engine's own is
`torch` (`torch.py`). A new runtime is one module with a `Runtime` subclass plus one registration:

    class MyRuntime(Runtime):
        name = "my-runtime"
        def save(self, model, tokenizer, directory, planned, **meta): ...    # what the runtime loads
        def evaluate(self, model, tokenizer, directory, fidelity, reference=None, keep_topk=0, prior=None): ...
        def measure(self, directory, settings): ...            # -> Measurement fields
        def measure_pair(self, candidate, baseline, settings, rounds): ...   # -> PairMeasurement fields

    @autoslm.hookimpl
    def register_runtimes(register):
        register(MyRuntime)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from autoslm.targets import MeasureSettings


class Runtime(ABC):
    """Executes and times a checkpoint in the current process."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    default_space: ClassVar[str] = "default"  # the search space a search uses when --space is not given
    # True: `save` and `evaluate` also take the base model as its files (`autoslm.models.ModelFiles`) in place of a
    # torch model, for policies whose techniques do not need one (`Technique.needs_torch_model`)
    takes_files: ClassVar[bool] = False

    def version(self) -> dict[str, str]:
        """What a recipe records about this runtime (library versions, build)."""
        return {}

    def preload(self, directory: Path) -> list[str]:
        """Modules a process measuring `directory` would import before it loads the model. Named ones are imported
        once, by a fork server whose children do the measuring (`autoslm/targets/forkserver.py`); none (the
        default): each measurement is a new `python -m autoslm.targets.worker`."""
        return []

    def refuses(self, technique: type) -> str | None:
        """Why a technique cannot be part of a policy for this runtime (None: it can). By default a technique that
        belongs to another runtime (`Technique.runtime`) is refused."""
        other = getattr(technique, "runtime", None)
        return None if other in (None, self.name) else f"it belongs to the {other} runtime"

    def refuses_model(self, model: Any) -> str | None:
        """Why this runtime cannot run `model` at all (None: it can), asked before a search does any work. `model`:
        a loaded model, or a model directory's config.json as a dict (asked before anything is loaded)."""
        return None

    def check_files(self, directory: Path) -> None:
        """Raise a UserError if this runtime cannot take the model directory `directory` (config, tokenizer), before
        a search or `prepare` loads it or writes anything. By default: nothing to check."""
        return None

    def refuses_on(self, technique: type, model: Any) -> str | None:
        """Why a technique cannot be part of a policy for `model` in this runtime though both are supported on
        their own (None: it can); asked once the model is loaded, before a search or `apply` does any work."""
        return None

    @abstractmethod
    def save(self, model: Any, tokenizer: Any, directory: Path, planned: list[Any], **meta: Any) -> Path:
        """Write what this runtime loads for the compressed `model` into `directory` (with a manifest). `planned`:
        the policy's validated steps (runtime-side steps, e.g. quant.gguf, act here)."""

    @abstractmethod
    def evaluate(
        self, model: Any, tokenizer: Any, directory: Path, fidelity: Any, reference: Any = None, keep_topk: int = 0,
        prior: Any = None,
    ) -> Any:  # fmt: skip
        """Quality (`autoslm.evaluate.Quality`) of the checkpoint `save` wrote, as this runtime computes it, on the
        held-out windows every runtime uses; KL divergence from `reference`; `keep_topk`: keep this model's top-k
        next-token distribution (`Quality.reference`) to serve as a reference later. `prior`: this checkpoint's
        Quality at a smaller fidelity, whose figures may be reused (`autoslm.evaluate.evaluate`); a runtime may
        ignore it."""

    def prepare(self, spec: str) -> Path:
        """A directory this runtime can measure and evaluate for a `--model` spec (`profile`, `eval`)."""
        from autoslm.models import resolve

        return resolve(spec)

    @abstractmethod
    def measure(self, directory: Path, settings: MeasureSettings) -> dict[str, Any]:
        """Load the checkpoint, run it as it will be used, return the fields of `autoslm.targets.Measurement`."""

    @abstractmethod
    def measure_pair(self, candidate: Path, baseline: Path, settings: MeasureSettings, rounds: int) -> dict[str, Any]:
        """Time the two checkpoints alternately for `rounds` rounds; the fields of `PairMeasurement`."""


def check_policy(runtime: str, planned: list[Any], model: Any = None) -> None:
    """Refuse (UserError) a policy with a step the runtime cannot run (on `model`, when given), naming the step
    and why."""
    from autoslm.errors import UserError

    rt = get_runtime(runtime)
    for p in planned:
        reason = rt.refuses(p.entry.cls) or (rt.refuses_on(p.entry.cls, model) if model is not None else None)
        if reason:
            raise UserError(f"technique '{p.name}' cannot run in the {runtime} runtime: {reason}")
        reason = p.entry.cls.refuses_model(model) if model is not None else None
        if reason:
            raise UserError(f"technique '{p.name}' cannot apply to this model: {reason}")


def works_from_files(runtime: str, techniques: Iterable[Any]) -> bool:
    """Whether a policy (or a space) of these technique classes runs from the model's files in `runtime`, never
    loading it into torch: the runtime `takes_files` and no technique `needs_torch_model`. The one rule the search,
    its memory check and `autoslm apply` share."""
    return get_runtime(runtime).takes_files and not any(t.needs_torch_model for t in techniques)


def get_runtime(name: str) -> Runtime:
    """An instance of the runtime registered under `name`, or a UserError listing the installed ones."""
    from autoslm.plugins import get_registry

    return get_registry().lookup("runtimes", name, "--runtime")()


__all__ = ["Runtime", "check_policy", "get_runtime", "works_from_files"]

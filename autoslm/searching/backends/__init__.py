"""Search backends: what runs the trials of a study. A table keyed by name (`--backend NAME`), filled through the
`register_search_backends` hook; the engine's own are `optuna` (this process) and `ray` (Ray Tune on a cluster).

A backend gets a `BackendJob` (the objective, the study, how many trials remain, a callback for each finished trial)
and runs trials until that many more are counted. It asks the study's sampler for policies in the format of
`searching/policy.py`, evaluates them with `Objective.evaluate_policy`, and writes outcomes with
`searching/trials.py` (`record`, or `replay` for an identical policy already evaluated). A new backend is one module
with a `SearchBackend` subclass plus one registration.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from autoslm.searching.objective import Objective
    from autoslm.searching.settings import SearchSettings


@dataclass
class BackendJob:
    objective: Objective
    study: Any  # optuna.Study
    storage: Any  # its Optuna storage
    settings: SearchSettings
    baseline: dict[str, Any]
    remaining: int  # trials still to count toward settings.trials
    after_trial: Callable[[Any, Any], None]  # (study, FrozenTrial) after each finished trial


class SearchBackend(ABC):
    name: ClassVar[str]
    help: ClassVar[str] = ""

    @classmethod
    def check(cls, settings: SearchSettings) -> None:
        """Refuse settings this backend cannot honour (a UserError naming the option)."""
        return None

    def prepare(self, study: Any, resume: bool) -> None:
        """Before trials run (e.g. clean up what a killed run of this backend left behind)."""
        return None

    @abstractmethod
    def run(self, job: BackendJob) -> None:
        """Run trials until `job.remaining` more are counted (or the settings' timeout passes)."""


def get_backend(name: str) -> SearchBackend:
    from autoslm.plugins import get_registry

    return get_registry().lookup("backends", name, "--backend")()


__all__ = ["BackendJob", "SearchBackend", "get_backend"]

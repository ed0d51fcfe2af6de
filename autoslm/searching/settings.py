"""What a search needs, validated completely before anything is written, and stored in its study for `--resume`.

`SearchSettings.create(**options)` is the one way in (the CLI and `autoslm.search(...)` both use it): it checks
every field (the budget is parsed here, once; the model spec, the space file, the sampler, backend, target and
runtime are looked up in their tables) and turns each problem into a one-line `UserError` naming the flag. The
defaults live here and nowhere else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from autoslm.errors import UserError
from autoslm.models import DEFAULT_MODEL, spec_help
from autoslm.searching.budget import Budget
from autoslm.searching.space import spaces_dir
from autoslm.targets import DECODE_CONTEXT, MAX_CONTEXT, THREADS


def _shipped_spaces() -> str:
    """The shipped spaces' names, for the help text (read from the folder: it cannot drift)."""
    return ", ".join(sorted(p.stem for p in spaces_dir().glob("*.yaml")))


# A resumed (or joined) search must keep these: trials measured or judged under other values are not comparable.
# The seed may differ: processes sharing one study each seed their own sampler, and each trial records its seed.
IDENTITY = ("model", "budget", "space", "fidelity", "sampler", "target", "runtime", "threads", "context")


class SearchSettings(BaseModel):
    """Every option of a search. Field descriptions are the CLI's help texts."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    model: str = Field(
        DEFAULT_MODEL,
        description=spec_help(),
    )
    budget: str = Field(
        "decode_ms<=0.7x",
        description="hard limits, absolute, relative to the baseline or to a named preset measured first: "
        "'decode_ms<=0.7x,memory_mb<=500', 'size_mb<=Q4_K_M', 'bpw<=4.5' (metrics: decode_ms, decode_p90_ms, "
        "prefill_ms, memory_mb, size_mb, bpw); '' or 'none': no limits (the most accurate candidate wins)",
    )
    space: str | None = Field(
        None,
        description=f"search space: a shipped one ({_shipped_spaces()}) or a YAML file; unset: the runtime's own "
        "(default for torch, llamacpp for llama.cpp)",
    )
    trials: int = Field(12, ge=1, le=100_000, description="candidate policies to evaluate (the baseline is extra)")
    out: str = Field("runs/search", description="run directory (study.db, recipe.yaml, checkpoint/)")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seed for the sampler and every technique")
    sampler: str = Field("tpe", description="tpe | nsga2 | random (plugins may add more)")
    storage: str | None = Field(
        None, description="Optuna storage URL (default: sqlite in --out); journal:PATH for a journal file"
    )
    study: str = Field("autoslm", min_length=1, description="study name inside the storage")
    timeout_s: float | None = Field(None, gt=0, description="stop starting new trials after this many seconds")
    fidelity: str = Field("full", description="quality evaluation of each candidate: full or low")
    warm_start: bool = Field(True, description="first try each technique alone at its defaults (<= 1/3 of trials)")
    backend: str = Field("optuna", description="optuna (this process) or ray (Ray Tune, on a Ray cluster)")
    ray_address: str | None = Field(None, description="--backend ray: the cluster to join (default: a local Ray)")
    max_concurrent: int = Field(2, ge=1, description="--backend ray: trials running at once")
    cpus_per_trial: float = Field(1.0, gt=0, description="--backend ray: CPUs Ray reserves per trial")
    recheck_rounds: int = Field(
        4,
        ge=0,
        le=64,
        description="close calls (decode or prefill within --recheck-margin of its limit) are timed again beside "
        "the baseline, alternating for this many rounds, and judged on the median ratio; 0 trusts one measurement",
    )
    recheck_margin: float = Field(
        0.15, ge=0, lt=1, description="how near a limit is a close call, as a fraction of it (0.15 = within 15%)"
    )
    busy_retries: int = Field(
        3,
        ge=0,
        le=10,
        description="a measurement disturbed by other work on the target (other processes' CPU or steal time while "
        "it timed) is repeated up to this many times, each after waiting for a quiet moment (--busy-wait); if the "
        "target stays busy, timing is judged beside the baseline in one process (--recheck-rounds rounds of one "
        "timed run each); "
        "0 measures once and never waits",
    )
    busy_wait: float = Field(
        120.0,
        ge=0,
        le=300,
        description="seconds a timed measurement waits at most for the target to be quiet (other processes under "
        "0.3 cores for 3 s) before it times; only when the budget limits decode or prefill time. Waiting and "
        "repeating together never cost more than the measuring itself (+15 s): a busy machine stops being waited for",
    )
    measure_timeout: float | None = Field(
        None,
        gt=0,
        le=7 * 86400,
        description="kill a measurement after this many seconds; default: 600 s, more for a big model and for "
        "paired rounds (a limit scaled to the weights' size); an agent caps it at its own --timeout-s",
    )
    target: str = Field("local", description="where to measure: local, or http://HOST:PORT of `autoslm agent`")
    runtime: str = Field("torch", description="what runs each candidate on the target (see `autoslm plugins`)")
    threads: int = Field(
        THREADS,
        ge=1,
        le=256,
        description="threads every measurement runs the candidate with (pinned): the deployment's thread count. On "
        "a target with no more cores than this, any other work lands in the timings (docs/benchmarks.md)",
    )
    context: int = Field(
        DECODE_CONTEXT,
        ge=1,
        le=MAX_CONTEXT,
        description="tokens in the KV cache when decode is timed (as `llama-bench -d N`); memory_mb is then the peak "
        f"with that cache, so a budget means 'at N tokens of context'. Default {DECODE_CONTEXT}: decode right after "
        "a short prompt",
    )
    target_token: str | None = Field(None, exclude=True, repr=False, description="the agent's token (never stored)")

    _budget: Budget = PrivateAttr(default_factory=Budget)

    @classmethod
    def create(cls, **options: Any) -> SearchSettings:
        """Validated settings, or a UserError naming the option and how to fix it. Writes nothing."""
        try:
            settings = cls(**options)
        except ValidationError as exc:
            raise UserError(one_line_error(exc)) from exc
        settings.check()
        return settings

    def model_post_init(self, context: Any) -> None:
        self._budget = Budget.parse(self.budget)

    @property
    def limits(self) -> Budget:
        """The budget, parsed once when the settings were made."""
        return self._budget

    @property
    def run_dir(self) -> Path:
        return Path(self.out)

    @property
    def space_name(self) -> str:
        """The space to search: --space, or the runtime's default space."""
        from autoslm.runtimes import get_runtime

        return self.space or get_runtime(self.runtime).default_space

    def check(self) -> None:
        """Look every name up in its table: model spec, space, fidelity, sampler, backend, target, runtime."""
        from autoslm.evaluate import Fidelity
        from autoslm.models import parse_spec
        from autoslm.plugins import get_registry
        from autoslm.searching.space import find_space_file, space_techniques
        from autoslm.targets import get_target

        parse_spec(self.model)
        Fidelity.preset(self.fidelity)
        registry = get_registry()
        registry.lookup("samplers", self.sampler, "--sampler")
        registry.lookup("backends", self.backend, "--backend").check(self)
        runtime = registry.lookup("runtimes", self.runtime, "--runtime")()
        path = find_space_file(self.space_name)
        for name in space_techniques(path):
            reason = runtime.refuses(registry.technique(name).cls)
            if reason:
                raise UserError(
                    f"search space {path}: technique '{name}' cannot run in the {self.runtime} runtime ({reason}); "
                    f"use --space {runtime.default_space} or drop it from the space"
                )
        get_target(self.target, token=self.target_token)
        out = self.run_dir
        if out.exists() and not out.is_dir():
            raise UserError(f"--out '{out}' is a file: give a directory for the run")

    def differences(self, stored: SearchSettings) -> list[str]:
        """'name: stored -> given' for each option set here that differs from the stored search's."""
        return [
            f"{name}: {getattr(stored, name)!r} -> {getattr(self, name)!r}"
            for name in sorted(self.model_fields_set)
            if name != "target_token" and getattr(self, name) != getattr(stored, name)
        ]

    def resumed_from(self, stored: dict[str, Any]) -> tuple[SearchSettings, list[str]]:
        """The settings to continue a stored search with: identity options must match (else a UserError naming
        every difference); other options given now (trials, timeout, concurrency...) apply, and are listed."""
        try:
            previous = SearchSettings.model_validate(stored)
        except (ValidationError, UserError) as exc:
            raise UserError(
                f"the search stored in '{self.out}' has settings this version cannot read ({str(exc).splitlines()[0]})"
                ": start a new search with another --out"
            ) from exc
        changed = self.differences(previous)
        refused = [c for c in changed if c.split(":")[0] in IDENTITY]
        if refused:
            raise UserError(
                f"--resume: the search in '{self.out}' was started with other settings ({'; '.join(refused)}); "
                "resume with the stored ones (omit or restore those options) or start a new search with another --out"
            )
        update = {k: getattr(self, k) for k in self.model_fields_set if k not in IDENTITY}
        return previous.model_copy(update={**update, "target_token": self.target_token}), changed


def one_line_error(exc: ValidationError, flags: dict[str, str] | None = None) -> str:
    """A pydantic ValidationError of command-line options as one line naming the option (`flags`: field -> option
    where the option is not the field's name in dashes)."""
    err = exc.errors(include_url=False)[0]
    field = ".".join(map(str, err["loc"]))
    flag = (flags or {}).get(field) or "--" + field.replace("_", "-").replace("timeout-s", "timeout")
    if err["type"] == "extra_forbidden":
        return f"unknown search option '{field}': the options are {', '.join(SearchSettings.model_fields)}"
    given, ctx = err.get("input"), err.get("ctx", {})
    bounds = {
        "greater_than_equal": "a positive integer" if ctx.get("ge") == 1 else f"at least {ctx.get('ge')}",
        "greater_than": "positive" if ctx.get("gt") == 0 else f"greater than {ctx.get('gt')}",
        "less_than": f"less than {ctx.get('lt')}",
        "less_than_equal": f"at most {ctx.get('le')}",
    }
    what = f"must be {bounds[err['type']]}" if err["type"] in bounds else err["msg"].lower()
    return f"{flag} {what} (got {given!r})"


__all__ = ["IDENTITY", "SearchSettings", "one_line_error"]

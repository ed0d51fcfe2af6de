"""Budgets: `decode_ms<=18,memory_mb<=250`, absolute, relative to the measured baseline (`decode_ms<=0.6x`), or
relative to a named preset the search measures first on the same target (`size_mb<=Q4_K_M`, `decode_ms<=0.9xQ8_0`;
see `autoslm.searching.references`)."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict

from autoslm.errors import UserError

_TERM = re.compile(
    r"^\s*(?P<metric>[a-z0-9_]+)\s*<=\s*(?:(?P<value>[0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*(?P<x>x?))?\s*"
    r"(?P<ref>[A-Za-z][A-Za-z0-9_]{0,63})?\s*$"
)


class Limit(BaseModel):
    model_config = ConfigDict(frozen=True)

    metric: str
    value: float
    relative: bool = False
    reference: str | None = None  # relative to this preset's measurement instead of the baseline's

    def absolute(self, baseline: dict[str, float], references: dict[str, dict[str, float]] | None = None) -> float:
        if self.reference is not None:
            if not references or self.reference not in references:
                raise KeyError(f"budget term {self} needs the measurement of preset {self.reference}")
            return self.value * references[self.reference][self.metric]
        return self.value * baseline[self.metric] if self.relative else self.value

    def __str__(self) -> str:
        if self.reference is not None:
            return f"{self.metric}<={'' if self.value == 1 else f'{self.value:g}x'}{self.reference}"
        return f"{self.metric}<={self.value:g}{'x' if self.relative else ''}"


class Budget(BaseModel):
    """Hard limits on measured metrics; a candidate is feasible when it meets all of them."""

    model_config = ConfigDict(frozen=True)

    limits: tuple[Limit, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Budget:
        from autoslm.metrics import budget_metrics

        METRICS = budget_metrics()
        if text.strip().lower() in ("", "none"):  # documented: no limits (the most accurate candidate wins)
            return cls()
        limits = []
        terms = [t.strip() for t in text.split(",")]
        if text.strip() and not all(terms):
            raise UserError(
                f"budget '{text}' has an empty term: write METRIC<=LIMIT terms separated by single commas, "
                "e.g. decode_ms<=0.6x,memory_mb<=400"
            )
        for raw in filter(None, terms):
            m = _TERM.match(raw)
            if m is None or (m["value"] is None and m["ref"] is None) or (m["ref"] and m["value"] and not m["x"]):
                raise UserError(
                    f"budget term '{raw}' is malformed: write METRIC<=NUMBER, METRIC<=FACTORx (of the baseline), "
                    f"METRIC<=PRESET or METRIC<=FACTORxPRESET, e.g. decode_ms<=0.6x,memory_mb<=400 or "
                    f"size_mb<=Q4_K_M (metrics: {', '.join(METRICS)})"
                )
            if m["metric"] not in METRICS:
                raise UserError(f"budget metric '{m['metric']}' is unknown: use one of {', '.join(METRICS)}")
            value = float(m["value"]) if m["value"] is not None else 1.0
            if not 0 < value < 1e12:
                raise UserError(f"budget term '{raw}' must be a positive, finite number (below 1e12)")
            limits.append(
                Limit(metric=m["metric"], value=value, relative=bool(m["x"] or m["ref"]), reference=m["ref"] or None)
            )
        if len({lim.metric for lim in limits}) != len(limits):
            raise UserError(f"budget '{text}' names a metric twice: give each metric one limit")
        return cls(limits=tuple(limits))

    @property
    def timed(self) -> bool:
        """Whether a limit is on a timing metric (decode, prefill): verdicts other work on the target can move."""
        from autoslm.metrics import timing_metrics

        return any(lim.metric in timing_metrics() for lim in self.limits)

    @property
    def references(self) -> tuple[str, ...]:
        """The presets the budget is written against, in order of first mention."""
        return tuple(dict.fromkeys(lim.reference for lim in self.limits if lim.reference))

    def violations(
        self,
        metrics: dict[str, float],
        baseline: dict[str, float],
        references: dict[str, dict[str, float]] | None = None,
    ) -> dict[str, float]:
        """Per metric: (measured - limit) / limit; <= 0 means within budget (Optuna's constraint convention).
        `references`: preset name -> its measured metrics (for terms like size_mb<=Q4_K_M)."""
        out = {}
        for lim in self.limits:
            limit = lim.absolute(baseline, references)
            out[lim.metric] = (metrics[lim.metric] - limit) / limit
        return out

    def __str__(self) -> str:
        return ",".join(map(str, self.limits)) or "none"

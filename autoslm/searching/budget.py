"""Budgets: `decode_ms<=18,memory_mb<=250`, absolute or relative to the measured baseline (`decode_ms<=0.6x`)."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict

from autoslm.errors import UserError

_TERM = re.compile(r"^\s*(?P<metric>[a-z0-9_]+)\s*<=\s*(?P<value>[0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*(?P<x>x?)\s*$")


class Limit(BaseModel):
    model_config = ConfigDict(frozen=True)

    metric: str
    value: float
    relative: bool = False

    def absolute(self, baseline: dict[str, float]) -> float:
        return self.value * baseline[self.metric] if self.relative else self.value

    def __str__(self) -> str:
        return f"{self.metric}<={self.value:g}{'x' if self.relative else ''}"


class Budget(BaseModel):
    """Hard limits on measured metrics; a candidate is feasible when it meets all of them."""

    model_config = ConfigDict(frozen=True)

    limits: tuple[Limit, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Budget:
        from autoslm.metrics import budget_metrics

        METRICS = budget_metrics()
        limits = []
        terms = [t.strip() for t in text.split(",")]
        if text.strip() and not all(terms):
            raise UserError(
                f"budget '{text}' has an empty term: write METRIC<=LIMIT terms separated by single commas, "
                "e.g. decode_ms<=0.6x,memory_mb<=400"
            )
        for raw in filter(None, terms):
            m = _TERM.match(raw)
            if m is None:
                raise UserError(
                    f"budget term '{raw}' is malformed: write METRIC<=NUMBER or METRIC<=FACTORx, "
                    f"e.g. decode_ms<=0.6x,memory_mb<=400 (metrics: {', '.join(METRICS)})"
                )
            if m["metric"] not in METRICS:
                raise UserError(f"budget metric '{m['metric']}' is unknown: use one of {', '.join(METRICS)}")
            value = float(m["value"])
            if not 0 < value < 1e12:
                raise UserError(f"budget term '{raw}' must be a positive, finite number (below 1e12)")
            limits.append(Limit(metric=m["metric"], value=value, relative=bool(m["x"])))
        if len({lim.metric for lim in limits}) != len(limits):
            raise UserError(f"budget '{text}' names a metric twice: give each metric one limit")
        return cls(limits=tuple(limits))

    def violations(self, metrics: dict[str, float], baseline: dict[str, float]) -> dict[str, float]:
        """Per metric: (measured - limit) / limit; <= 0 means within budget (Optuna's constraint convention)."""
        out = {}
        for lim in self.limits:
            limit = lim.absolute(baseline)
            out[lim.metric] = (metrics[lim.metric] - limit) / limit
        return out

    def __str__(self) -> str:
        return ",".join(map(str, self.limits)) or "none"

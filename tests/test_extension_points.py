"""Targets, runtimes, search backends and samplers are tables a plugin extends with one module + one registration.

The plugin below adds a runtime (`toy`: the torch runtime, counting what it measured) and a target (`inproc://`:
measures in this process, so the test can see the runtime it used) and a sampler; a real search then runs on them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import autoslm
from autoslm.errors import UserError
from autoslm.plugins import get_registry
from autoslm.runtimes import get_runtime
from autoslm.runtimes.torch import TorchRuntime
from autoslm.targets import Measurement, MeasureSettings, PairMeasurement, Target

MEASURED: list[str] = []


class ToyRuntime(TorchRuntime):
    name = "toy"
    description = "the torch runtime, counting its measurements"

    def measure(self, directory: Path, settings: MeasureSettings) -> dict[str, Any]:
        MEASURED.append(Path(directory).name)
        return super().measure(directory, settings)


class InProcessTarget(Target):
    schemes = ("inproc",)
    kind = "in-process"

    def fingerprint(self) -> dict[str, str | int]:
        return {"id": "inproc"}

    def measure(self, checkpoint: Path, settings: MeasureSettings | None = None) -> Measurement:
        settings = settings or MeasureSettings()
        return Measurement.model_validate(get_runtime(settings.runtime).measure(Path(checkpoint), settings))

    def measure_pair(self, candidate: Path, baseline: Path, rounds: int, settings: Any = None) -> PairMeasurement:
        settings = settings or MeasureSettings()
        return PairMeasurement.model_validate(
            get_runtime(settings.runtime).measure_pair(candidate, baseline, settings, rounds)
        )


class ToyPlugin:
    @autoslm.hookimpl
    def register_runtimes(self, register: Any) -> None:
        register(ToyRuntime)

    @autoslm.hookimpl
    def register_targets(self, register: Any) -> None:
        register(InProcessTarget)

    @autoslm.hookimpl
    def register_samplers(self, register: Any) -> None:
        import optuna

        register("brute", lambda seed: optuna.samplers.BruteForceSampler(seed=seed))


@contextlib.contextmanager
def _registered(plugin: object, name: str, **dist: str) -> Iterator[tuple[Any, Any]]:
    """(registry, plugin info) with `plugin` registered for the block, removed after it."""
    registry = get_registry()
    info = registry.add(plugin, name, **dist)
    try:
        yield registry, info
    finally:
        registry.remove(name)


@pytest.fixture
def toy_plugin():
    with _registered(ToyPlugin(), "toy-plugin", dist="autoslm-toy", version="0.1") as (_, info):
        yield info


def test_plugin_tables_list_what_it_added(toy_plugin) -> None:
    assert sorted(toy_plugin.provides) == ["runtime toy", "sampler brute", "target inproc"]
    registry = get_registry()
    assert registry.runtimes["toy"].dist == "autoslm-toy" and registry.targets["inproc"].obj is InProcessTarget
    assert isinstance(get_runtime("toy"), ToyRuntime)


def test_a_search_runs_on_a_plugin_runtime_target_and_sampler(toy_plugin, tmp_path: Path) -> None:
    MEASURED.clear()
    options = {"model": "tiny-llama", "space": "tiny", "budget": "memory_mb<=3x", "fidelity": "low"}
    result = autoslm.search(
        **options,
        trials=2,
        out=tmp_path / "run",
        sampler="brute",
        target="inproc://here",
        runtime="toy",
        warm_start=False,
    )
    assert MEASURED and MEASURED[0] == "baseline"  # the baseline, then each measured candidate, through the toy runtime
    assert len([r for r in result.trials if r.counted]) == 2
    if result.recipe_path:
        recipe = result.recipe_path.read_text()
        assert "kind: in-process" in recipe and "runtime: toy" in recipe


class EnergyRuntime(TorchRuntime):
    name = "energy"
    description = "the torch runtime, also reporting a figure a plugin declares"

    def measure(self, directory: Path, settings: MeasureSettings) -> dict[str, Any]:
        out = super().measure(directory, settings)
        return {**out, "energy_mj": 2.0 * out["decode_ms"]}  # a test double's figure, derived from a real timing


class EnergyPlugin:
    @autoslm.hookimpl
    def register_metrics(self, register: Any) -> None:
        from autoslm.metrics import Metric

        register(Metric("energy_mj", "mJ", "energy per generated token", digits=3))

    @autoslm.hookimpl
    def register_runtimes(self, register: Any) -> None:
        register(EnergyRuntime)


def test_a_plugins_metric_reaches_trials_json_the_live_view_the_report_and_profile(
    toy_plugin, tmp_path: Path, capsys
) -> None:
    import json

    from rich.console import Console

    from autoslm.cli import main
    from autoslm.metrics import all_metrics
    from autoslm.search_view import SearchView

    with _registered(EnergyPlugin(), "energy-plugin", dist="autoslm-energy", version="0.1"):
        console = Console(record=True, width=250)
        with SearchView(console, 2) as view:
            result = autoslm.search(
                model="tiny-llama", space="tiny", budget="memory_mb<=3x,energy_mj<=10x", fidelity="low", trials=2,
                out=tmp_path / "run", sampler="brute", target="inproc://here", runtime="energy", warm_start=False,
                progress=view.event,
            )  # fmt: skip
            view.summary(result)
        rows = [r for r in json.loads((tmp_path / "run" / "trials.json").read_text()) if r["metrics"]]
        assert rows and all(r["metrics"]["energy_mj"] == 2.0 * r["metrics"]["decode_ms"] for r in rows)
        shown = result.best or result.closest[0]
        shown_text = console.export_text()
        assert "energy mJ" in shown_text and f"{shown.metrics['energy_mj']:.3f}" in shown_text
        page = (tmp_path / "run" / "report.html").read_text()
        assert "<th>energy mJ</th>" in page and f"<td>{shown.metrics['energy_mj']:.3f}</td>" in page
        capsys.readouterr()
        args = ["profile", "--model", "tiny-llama", "--runtime", "energy", "--target", "inproc://here",
                "--decode-tokens", "4", "--repeats", "1"]  # fmt: skip
        assert main(args) == 0
        assert "energy mJ (energy per generated token)" in capsys.readouterr().out
        assert main([*args, "--json"]) == 0
        profiled = json.loads(capsys.readouterr().out)
        assert profiled["energy_mj"] == 2.0 * profiled["decode_ms"]
    assert "energy_mj" not in all_metrics()  # the plugin's removal takes its metric with it


def test_registering_a_broken_table_entry_fails_that_plugin_only() -> None:
    class NotARuntime:
        name = "broken"

    class Broken:
        @autoslm.hookimpl
        def register_runtimes(self, register: Any) -> None:
            register(NotARuntime)

    with _registered(Broken(), "broken-plugin") as (registry, info):
        assert info.status == "failed" and "is not a subclass of autoslm.runtimes.Runtime" in (info.error or "")
        assert "broken" not in registry.runtimes and "torch" in registry.runtimes


def test_duplicate_names_are_refused() -> None:
    class Again:
        @autoslm.hookimpl
        def register_runtimes(self, register: Any) -> None:
            register(TorchRuntime)

    with _registered(Again(), "again") as (_, info):
        assert info.status == "failed" and "runtime 'torch' is already registered by autoslm" in (info.error or "")


def test_unknown_runtime_is_a_clear_error() -> None:
    with pytest.raises(UserError, match=r"--runtime 'tensorrt' is not known: use one of llama\.cpp, torch"):
        get_runtime("tensorrt")

"""The cost forecast: refused up front when the model cannot fit, said after the baseline, checked at the end."""

from __future__ import annotations

from pathlib import Path

import pytest

import autoslm
from autoslm.errors import UserError
from autoslm.searching import forecast


def test_parameters_are_read_from_the_weight_headers(tiny) -> None:
    from autoslm.models import resolve

    params = forecast.parameters_in(resolve("tiny-llama"))
    stored = sum(p.numel() for p in tiny.model.state_dict().values()) - tiny.model.lm_head.weight.numel()  # tied
    assert params == stored


def test_a_model_that_cannot_fit_stops_the_search_before_anything_is_written(tmp_path: Path, monkeypatch) -> None:
    from autoslm.models import resolve

    monkeypatch.setattr(forecast, "meminfo_mb", lambda field: 20.0)  # 20 MB available: 3 fp32 copies need ~40
    out = tmp_path / "run"
    with pytest.raises(UserError, match=r"a search holds about 3 fp32 copies .* available now"):
        autoslm.search(model=str(resolve("tiny-llama")), space="tiny", budget="memory_mb<=3x", trials=1,
                       fidelity="low", out=out)  # fmt: skip
    assert not out.exists()


def test_the_forecast_line_and_a_timeout_that_cannot_hold_the_trials() -> None:
    f = forecast.Forecast(trials=30, per_trial_s=48.0, total_s=1440.0, peak_mb=3174.4, memory_mb=24 * 1024.0)
    assert f.line() == (
        "forecast: 30 trials, about 24 min (~48 s per trial, as the baseline took); peak memory about 3.1 GB of 24 GB"
    )
    short = forecast.Forecast(trials=30, per_trial_s=48.0, total_s=1440.0, peak_mb=100.0, memory_mb=None,
                              timeout_s=600.0)  # fmt: skip
    assert short.line().endswith("; --timeout 600 s leaves time for about 12 of them")
    assert forecast.against({"total_s": 1440.0}, 1200.0) == "took 20 min; the forecast said 24 min (+20%)"
    assert forecast.against({"total_s": 1440.0, "after_first_s": 1140.0}, 1200.0) == (
        "took 20 min; the forecast said 24 min (+20%), after the first trial 19 min (-5%)"
    )


def test_a_search_from_files_counts_the_measuring_process_beside_its_resting_size_not_its_peak(monkeypatch) -> None:
    """A llama.cpp quantization search maps the F32 file to evaluate it and lets it go before the measuring process
    maps the same file: the two peaks never meet (the 3B shape: 25.4 GB forecast as their sum, on a 24 GB machine)."""
    from autoslm.targets import measure

    monkeypatch.setattr(measure, "peak_rss_mb", lambda: 12_000.0)  # evaluating the F32 baseline
    monkeypatch.setattr(measure, "rss_mb", lambda: 900.0)  # after it
    baseline = {"seconds": {"measure": 100.0, "quality": 200.0}, "metrics": {"memory_mb": 12_277.0}}
    worker = forecast.WORKER_START_MB["llama.cpp"] + 12_277.0
    files = forecast.after_baseline(baseline, 2, "llama.cpp", files_only=True)
    assert files is not None and files.peak_mb == pytest.approx(900.0 + worker)
    held = forecast.after_baseline(baseline, 2, "llama.cpp")  # a torch step keeps its models while measured
    assert held is not None and held.peak_mb == pytest.approx(12_000.0 + worker)
    monkeypatch.setattr(measure, "rss_mb", lambda: 100.0)
    small = forecast.after_baseline({**baseline, "metrics": {"memory_mb": 50.0}}, 2, "llama.cpp", files_only=True)
    assert small is not None and small.peak_mb == 12_000.0  # the search's own peak, where it is the larger


def test_a_search_says_its_forecast_after_the_baseline_and_checks_it_at_the_end(tmp_path: Path) -> None:
    events: list[tuple[str, object]] = []
    result = autoslm.search(model="tiny-llama", space="tiny", budget="memory_mb<=3x", trials=2, fidelity="low",
                            out=tmp_path / "run", progress=lambda k, p: events.append((k, p)))  # fmt: skip
    said = [p for k, p in events if k == "forecast"]
    assert len(said) == 1 and said[0].trials == 2 and said[0].per_trial_s > 0 and said[0].peak_mb > 100
    assert result.baseline["seconds"] and result.forecast.startswith("took ")
    assert "the forecast said" in result.forecast
    revised = [p for k, p in events if k == "forecast_revised"]  # once, after the first trial, at its pace
    assert len(revised) == 1 and revised[0]["total_s"] == pytest.approx(2 * revised[0]["per_trial_s"])
    assert ", after the first trial " in result.forecast
    left = [p["left_s"] for k, p in events if k == "trial"]  # the rest at this run's pace, after every trial
    assert len(left) == 2 and left[0] > 0 and left[1] == 0


def test_the_time_left_is_the_pace_of_this_run_times_the_trials_left() -> None:
    from autoslm.searching.runner import time_left

    assert time_left(100.0, ran=2, left=3) == 150.0
    assert time_left(0.0, ran=0, left=30) is None  # nothing ran yet: no pace to go by
    assert [forecast.duration(s) for s in (45, 1440, 9000)] == ["45 s", "24 min", "2.5 h"]

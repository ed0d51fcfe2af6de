"""Settings are validated before anything is written; --resume refuses changed identity settings and names them."""

from __future__ import annotations

from pathlib import Path

import pytest

import autoslm
from autoslm.errors import UserError
from autoslm.searching import SearchSettings

TINY = {"model": "tiny-llama", "space": "tiny", "fidelity": "low", "sampler": "random", "budget": "memory_mb<=3x"}


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"sampler": "tpee"}, "--sampler 'tpee' is not known: use one of nsga2, random, tpe"),
        ({"backend": "dask"}, "--backend 'dask' is not known: use one of optuna, ray"),
        ({"runtime": "onnx"}, "--runtime 'onnx' is not known: use one of llama.cpp, torch"),
        ({"target": "ftp://x"}, "--target 'ftp://x' is not understood"),
        ({"target": "http://127.0.0.1:9"}, "needs a token"),
        ({"budget": "decode_ms<0.5"}, "budget term 'decode_ms<0.5' is malformed"),
        ({"budget": "ppl<=3"}, "budget metric 'ppl' is unknown"),
        ({"fidelity": "medium"}, "unknown fidelity 'medium'"),
        ({"space": "nope"}, "search space 'nope' not found"),
        ({"model": "nope"}, "unknown model 'nope'"),
        ({"trials": 0}, "--trials must be a positive integer (got 0)"),
        ({"trials": 10**20}, "--trials must be at most 100000"),
        ({"seed": -1}, "--seed must be at least 0"),
        ({"timeout_s": 0}, "--timeout must be positive"),
        ({"ray_address": "10.0.0.5:6379"}, "--ray-address needs --backend ray"),
        ({"colour": "red"}, "unknown search option 'colour'"),
        ({"threads": 0}, "--threads must be a positive integer (got 0)"),
        ({"threads": 10**9}, "--threads must be at most 256"),
        ({"threads": "two"}, "--threads input should be a valid integer"),
        ({"context": 0}, "--context must be a positive integer (got 0)"),
        ({"context": 10**12}, "--context must be at most 32768"),
        ({"context": "4k"}, "--context input should be a valid integer"),
    ],
)
def test_bad_settings_are_one_clear_error_and_write_nothing(options: dict, fragment: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(UserError) as err:
        autoslm.search(**{**TINY, "trials": 1, **options, "out": out})
    assert fragment in str(err.value) and "\n" not in str(err.value)
    assert not out.exists()


def test_out_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        SearchSettings.create(**TINY, out=str(tmp_path / "f"))


def test_typo_leaves_nothing_then_the_right_call_runs_and_resume_checks_settings(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(UserError, match="--sampler 'tpee'"):
        autoslm.search(**{**TINY, "sampler": "tpee"}, trials=1, out=out)
    assert not out.exists()  # no study.db, no directory: the next call needs no --resume
    result = autoslm.search(**TINY, trials=1, out=out, warm_start=False)
    assert (out / "study.db").is_file() and (out / "report.html").is_file()
    assert result.settings.sampler == "random" and len([r for r in result.trials if r.counted]) == 1

    # a different budget and model: refused, both named, nothing run
    with pytest.raises(UserError) as err:
        autoslm.search(**{**TINY, "budget": "memory_mb<=2x", "model": "smollm2-135m"}, trials=2, out=out, resume=True)
    message = str(err.value)
    assert "budget: 'memory_mb<=3x' -> 'memory_mb<=2x'" in message
    assert "model: 'tiny-llama' -> 'smollm2-135m'" in message
    # without --resume the run directory is not reused
    with pytest.raises(UserError, match="pass --resume"):
        autoslm.search(**TINY, trials=2, out=out)

    # --resume --trials N sets N (here: one more trial); the stored settings are kept
    events: list[tuple[str, object]] = []
    resumed = autoslm.search(
        model="tiny-llama", trials=2, out=out, resume=True, progress=lambda e, p: events.append((e, p))
    )
    assert resumed.settings.budget == "memory_mb<=3x" and resumed.settings.space == "tiny"
    assert len([r for r in resumed.trials if r.counted]) == 2
    assert ("resumed", ["trials: 1 -> 2"]) in events


def test_resume_reports_what_it_applies() -> None:
    stored = SearchSettings.create(**TINY, trials=3).model_dump()
    given = SearchSettings.create(model="tiny-llama", trials=5, timeout_s=60)
    settings, changed = given.resumed_from(stored)
    assert settings.trials == 5 and settings.timeout_s == 60 and settings.space == "tiny"
    assert changed == ["timeout_s: None -> 60.0", "trials: 3 -> 5"]
    with pytest.raises(UserError, match=r"space: 'tiny' -> 'default'"):
        SearchSettings.create(space="default", seed=7).resumed_from(stored)
    joined, changed = SearchSettings.create(seed=7).resumed_from(stored)  # another process joining a shared study
    assert joined.seed == 7 and changed == ["seed: 0 -> 7"]
    # timings at another thread count are not comparable with the stored ones
    with pytest.raises(UserError, match=r"threads: 2 -> 1"):
        SearchSettings.create(model="tiny-llama", threads=1).resumed_from(stored)
    # nor are timings and memory at another depth of the KV cache
    with pytest.raises(UserError, match=r"context: 16 -> 4096"):
        SearchSettings.create(model="tiny-llama", context=4096).resumed_from(stored)


def test_more_threads_than_the_target_has_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    import os

    out = tmp_path / "run"
    cores = os.cpu_count() or 1
    with pytest.raises(UserError) as err:
        autoslm.search(**{**TINY, "budget": "decode_ms<=0.9x"}, threads=cores + 1, trials=1, out=out)
    assert str(err.value) == f"--threads {cores + 1}: the target has {cores} CPU threads; use at most {cores}"
    assert not out.exists()


@pytest.mark.parametrize(
    ("budget", "threads", "cores", "fragment"),
    [
        ("decode_ms<=0.7x", 2, 2, "--threads 2 measures with every core of the target (2)"),
        ("prefill_ms<=50,size_mb<=100", 8, 8, "--threads 7 leaves one free"),
        ("decode_ms<=0.7x", 1, 2, None),  # a core left for the rest
        ("size_mb<=0.5x,memory_mb<=300", 2, 2, None),  # nothing timed: threads do not decide the verdicts
        ("decode_ms<=0.7x", 2, 0, None),  # a target that did not say how many cores it has
    ],
)
def test_measuring_with_every_core_is_warned_about(budget: str, threads: int, cores: int, fragment) -> None:
    from autoslm.searching.runner import _every_core

    warning = _every_core(SearchSettings.create(budget=budget, threads=threads), cores)
    if fragment is None:
        assert warning is None
    else:
        assert warning is not None and fragment in warning and "\n" not in warning


def test_a_changed_plugin_version_is_not_reused_and_resume_warns(tmp_path, monkeypatch) -> None:
    """The policy cache is keyed by each step's plugin distribution and version: after a plugin update, identical
    policies are evaluated again, and `--resume` says which plugins changed."""
    from autoslm.plugins import get_registry
    from autoslm.searching.runner import run_search
    from autoslm.searching.settings import SearchSettings

    out = tmp_path / "run"
    options = {"model": "tiny-llama", "space": "tiny", "budget": "memory_mb<=3x", "fidelity": "low",
               "out": str(out), "warm_start": True}  # fmt: skip
    from autoslm.pipeline import Step, plan
    from autoslm.searching.policy import canonical_hash

    first = run_search(SearchSettings.create(**options, trials=1))
    steps = first.trials[0].steps
    before = canonical_hash(plan([Step(**s) for s in steps]), {})
    entry = get_registry().technique(steps[0]["technique"])
    monkeypatch.setattr(entry, "version", entry.version + ".post1")
    assert canonical_hash(plan([Step(**s) for s in steps]), {}) != before  # the cache key moved
    events: list[tuple[str, object]] = []
    second = run_search(SearchSettings.create(**options, trials=2), resume=True,
                        progress=lambda kind, payload: events.append((kind, payload)))  # fmt: skip
    warnings = [str(p) for k, p in events if k == "warning"]
    assert any("plugins changed since this study began" in w and ".post1" in w for w in warnings), events
    assert len([r for r in second.trials if r.counted]) == 2


def test_threads_and_context_reach_the_recipe_and_a_resume_keeps_them(tmp_path: Path) -> None:
    import json

    import yaml

    out = tmp_path / "run"
    options = {**TINY, "budget": "size_mb<=1.5x", "context": 64}
    autoslm.search(**options, threads=1, trials=1, out=out, warm_start=False)
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    assert recipe["target"]["threads"] == 1 and recipe["target"]["context"] == 64
    card = (out / "checkpoint/README.md").read_text()
    assert "decode is ms per generated token with 64 tokens in the KV cache" in card
    # the stored settings carry it: a resume measures with the same count
    with pytest.raises(UserError, match=r"threads: 1 -> 2"):
        autoslm.search(**options, threads=2, trials=2, out=out, resume=True)
    assert len(json.loads((out / "trials.json").read_text())) == 1


def test_the_help_texts_name_every_shipped_space_and_model() -> None:
    """Rendered from the tables: a space file or model added later appears in --help without editing it."""
    from autoslm.models import BUILTIN_GGUF, TINY
    from autoslm.searching.settings import SearchSettings
    from autoslm.searching.space import spaces_dir

    space_help = SearchSettings.model_fields["space"].description or ""
    names = [p.stem for p in spaces_dir().glob("*.yaml")]
    assert len(names) >= 10 and all(f"{n}," in space_help or f"{n})" in space_help for n in names)
    model_help = SearchSettings.model_fields["model"].description or ""
    assert all(f"{n} |" in model_help for n in (*BUILTIN_GGUF, *TINY))

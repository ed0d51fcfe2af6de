"""End-to-end searches on tiny-llama: real measurement in fresh processes, real Optuna SQLite storage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import run_cli

import autoslm
from autoslm.search import search
from autoslm.search.optuna_backend import GRACE_S

REPO = Path(__file__).resolve().parents[2]


def _complete(db: Path) -> dict[int, float]:
    if not db.exists():
        return {}
    try:
        study = optuna.load_study(study_name="autoslm", storage=f"sqlite:///{db}")
    except Exception:
        return {}
    return {t.number: t.value for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))}


def test_sigkill_then_resume_loses_and_repeats_nothing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "autoslm.cli",
        "search",
        "--model",
        "tiny-llama",
        "--space",
        "tiny",
        "--budget",
        "memory_mb<=2x",
        "--trials",
        "5",
        "--out",
        str(out),
        "--fidelity",
        "low",
        "--seed",
        "3",
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 400
    while time.time() < deadline and len(_complete(out / "study.db")) < 2:
        time.sleep(1)
    running = run_cli("report", str(out))  # a report of a search that is still running
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert running.returncode == 0, running.stderr
    assert (out / "pareto.png").stat().st_size > 10_000 and "<img" in (out / "report.html").read_text()
    before = _complete(out / "study.db")
    assert len(before) >= 2, "the search did not complete two trials before the kill"
    time.sleep(GRACE_S + 2)  # the killed trial's heartbeat goes stale
    resumed = subprocess.run([*cmd, "--resume"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    after = _complete(out / "study.db")
    assert all(after[n] == v for n, v in before.items())  # nothing completed was lost or changed
    rows = json.loads((out / "trials.json").read_text())
    counted = [r for r in rows if r["state"] in ("complete", "pruned") or (r["state"] == "fail" and r["reason"])]
    assert len(counted) == 5  # the killed trial is retried, not counted twice
    page = (out / "report.html").read_text()  # the finished search rewrote its report
    assert page.count("<tr class=") == len(rows) and "data:image/png;base64," in page
    assert "Techniques in the good policies" in page
    evaluated = [r["policy_hash"] for r in rows if r["state"] == "complete" and r["cached_from"] is None]
    assert len(evaluated) == len(set(evaluated))  # identical policies were never evaluated twice
    assert (out / "recipe.yaml").exists() and (out / "checkpoint" / "model.safetensors").exists()


class _Explodes(autoslm.Technique):
    name = "test.explodes"
    stage = autoslm.Stage.PRUNE

    def apply(self, model, config, ctx):
        raise RuntimeError("this technique always fails")


class _ExplodingPlugin:
    @autoslm.hookimpl
    def register_techniques(self, register):
        register(_Explodes)


def test_failing_technique_becomes_failed_trial_and_search_finishes(tmp_path: Path) -> None:
    from autoslm.plugins import get_registry

    registry = get_registry()
    registry.add(_ExplodingPlugin(), "exploding")
    try:
        space = tmp_path / "space.yaml"
        space.write_text("techniques:\n  test.explodes: {}\n  prune.depth:\n    blocks: {int: [1, 2]}\n")
        result = search(
            model="tiny-llama",
            budget="memory_mb<=3x",
            space=str(space),
            trials=4,
            out=tmp_path / "run",
            fidelity="low",
            sampler="random",
            seed=1,
        )
    finally:
        registry.remove("exploding")
    failed = [r for r in result.trials if r["state"] == "fail"]
    assert failed and all("this technique always fails" in r["reason"] for r in failed)
    assert (tmp_path / "run" / "logs").is_dir()
    assert len([r for r in result.trials if r["state"] in ("complete", "fail", "pruned")]) == 4
    # a policy without the failing technique wins and is exported
    if result.best is not None:
        assert all(s["technique"] != "test.explodes" for s in result.best["steps"])
        assert result.recipe_path and result.recipe_path.exists()


def test_nothing_feasible_still_saves_everything(tmp_path: Path) -> None:
    result = search(
        model="tiny-llama",
        budget="size_mb<=1",
        space="tiny",
        trials=2,
        out=tmp_path / "run",
        fidelity="low",
        sampler="random",
    )
    assert result.best is None and result.closest
    assert (tmp_path / "run" / "trials.json").exists() and (tmp_path / "run" / "study.db").exists()
    assert not (tmp_path / "run" / "recipe.yaml").exists()


def test_existing_run_needs_resume(tmp_path: Path) -> None:
    from autoslm.errors import UserError

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "study.db").write_bytes(b"")
    with pytest.raises(UserError, match="pass --resume"):
        search(model="tiny-llama", space="tiny", trials=1, out=tmp_path / "run")

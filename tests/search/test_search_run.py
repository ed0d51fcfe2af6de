"""End-to-end searches on tiny-llama: real measurement in fresh processes, real Optuna SQLite storage."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import optuna
import pytest
from conftest import run_cli

import autoslm
from autoslm import search
from autoslm.run_dir import RunDir
from autoslm.searching.storage import GRACE_S

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
    failed = [r for r in result.trials if r.state == "fail"]
    assert failed and all("this technique always fails" in r.reason for r in failed)
    for r in failed:  # each failed trial's traceback, where the closing message points
        assert "this technique always fails" in RunDir(tmp_path / "run").trial_log(r.number).read_text()
    assert len([r for r in result.trials if r.state in ("complete", "fail", "pruned")]) == 4
    # a policy without the failing technique wins and is exported
    if result.best is not None:
        assert all(s["technique"] != "test.explodes" for s in result.best.steps)
        assert result.recipe_path and result.recipe_path.exists()


def test_a_search_whose_every_trial_fails_exits_non_zero(tmp_path: Path, capsys) -> None:
    from autoslm.cli import main
    from autoslm.plugins import get_registry

    registry = get_registry()
    registry.add(_ExplodingPlugin(), "exploding")
    space = tmp_path / "space.yaml"
    space.write_text("techniques:\n  test.explodes: {}\nrequired: [test.explodes]\n")
    args = ["search", "--model", "tiny-llama", "--budget", "memory_mb<=3x", "--space", str(space), "--trials", "2",
            "--out", str(tmp_path / "run"), "--fidelity", "low", "--sampler", "random"]  # fmt: skip
    try:
        code = main(args)
    finally:
        registry.remove("exploding")
    assert code == 1  # a scheduler or a script sees that nothing was learnt
    out = " ".join(capsys.readouterr().out.split())
    assert f"all 2 trials failed: see {RunDir(tmp_path / 'run').logs}/" in out


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
    run = RunDir(tmp_path / "run")
    assert run.study_db.exists() and run.outputs() == ["trials.json", "baseline.json", "report.html"]  # no recipe


def test_existing_run_needs_resume(tmp_path: Path) -> None:
    from autoslm.errors import UserError

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "study.db").write_bytes(b"")
    with pytest.raises(UserError, match="pass --resume"):
        search(model="tiny-llama", space="tiny", trials=1, out=tmp_path / "run")


def test_close_calls_are_timed_again_beside_the_baseline(tmp_path: Path) -> None:
    # pruning 0 blocks keeps the model: about 1.0x of the baseline against a 1.0x limit, within a 90% margin (one
    # reading of a 6 ms/token model on a busy 2-core CI machine once came out over 1.5x the baseline's)
    space = tmp_path / "space.yaml"
    space.write_text("techniques:\n  prune.depth:\n    blocks: 0\n")
    out = tmp_path / "run"
    result = search(model="tiny-llama", budget="decode_ms<=1x", space=str(space), trials=2, out=out,
                    fidelity="low", sampler="random", recheck_rounds=3, recheck_margin=0.9,
                    busy_retries=0)  # fmt: skip
    measured = [r for r in result.trials if r.cached_from is None and r.metrics]
    # 3 rounds, and 3 more (twice at most) while the paired verdict stays within a third of the margin of the limit
    assert measured and all(r.recheck and r.recheck["rounds"] in (3, 6, 9) for r in measured)
    for r in measured:  # timed in one process with the baseline, alternating: ratios of the same model
        rounds = r.recheck["rounds"]
        assert r.recheck["how"] == "one process" and len(r.recheck["pair_ratios"]["decode_ms"]) == rounds
        assert 0.5 < r.recheck["ratios"]["decode_ms"] < 2.0
        ms = r.recheck["ratios"]["decode_ms"] * r.recheck["baseline"]["decode_ms"]  # the baseline's reading in the pair
        assert r.metrics["decode_ms"] == pytest.approx(ms)
    assert (out / "baseline" / "model.safetensors").is_file()
    page = (out / "report.html").read_text()
    assert f"close call: re-measured {measured[0].recheck['rounds']}x beside the baseline" in page
    assert "The baseline over time" in page and (out / "baseline-drift.png").stat().st_size > 1000


@pytest.mark.real
def test_real_model_search_rechecks_exports_and_reapplies(tmp_path: Path) -> None:
    """The main job on SmolLM2-135M itself: baseline, a trial (a close call), recipe, report, rebuild from recipe."""
    import yaml

    space = tmp_path / "space.yaml"
    space.write_text("techniques:\n  quant.dynamic_int8:\n    smooth_alpha: 0.5\n    keep_fp32: 0\n")
    out = tmp_path / "run"
    # dynamic int8 decodes at about 0.6x the baseline's ms here: 25% under a 0.8x limit, a close call for a 90% margin
    proc = run_cli("search", "--model", "smollm2-135m", "--space", str(space), "--budget", "decode_ms<=0.8x",
                   "--trials", "1", "--fidelity", "low", "--recheck-rounds", "2", "--recheck-margin", "0.9",
                   "--busy-retries", "0", "--out", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = json.loads((out / "trials.json").read_text())
    # 2 rounds, 2 more (twice at most) while the paired verdict stays within 30% (a third of the margin) of the limit
    assert row["feasible"] and row["recheck"]["rounds"] in (2, 4, 6) and row["recheck"]["how"] == "one process"
    assert len(row["recheck"]["pair_ratios"]["decode_ms"]) == row["recheck"]["rounds"]
    assert 0.3 < row["recheck"]["ratios"]["decode_ms"] < 0.8  # int8 matmuls decode faster than fp32
    page = (out / "report.html").read_text()
    # why it was timed again: a close call, or (when other work disturbed the first timing) a busy machine
    assert re.search(rf"(close call|machine busy): re-measured {row['recheck']['rounds']}x beside the baseline", page)
    baseline = json.loads((out / "baseline.json").read_text())
    assert baseline["ppl"] < row["ppl"] < 2 * baseline["ppl"]  # int8 costs some perplexity, not the model
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    assert recipe["steps"][0]["technique"] == "quant.dynamic_int8"
    rebuilt = run_cli("apply", str(out / "recipe.yaml"), "--out", str(tmp_path / "rebuilt"))
    assert rebuilt.returncode == 0, rebuilt.stderr[-2000:]
    assert recipe["checkpoint_sha256"] in rebuilt.stdout  # the recipe reproduces the searched checkpoint exactly
    card = (out / "checkpoint" / "README.md").read_text()
    assert 'autoslm.load("path/to/this/folder")' in card and "decode ms" in card and "quant.dynamic_int8(" in card


def test_a_quant_only_llamacpp_search_never_loads_the_torch_model(tmp_path: Path, monkeypatch) -> None:
    """llama.cpp's quantization alone works from the model's files: the converter exports them, llama.cpp weighs
    (imatrix), quantizes, measures and scores. Loading the weights into torch fails here, as it would for a model
    whose torch weights cannot be loaded; the search and the recipe's replay still run."""
    from autoslm import checkpoint, models
    from autoslm.runtimes.llamacpp import GGUF
    from autoslm.searching.objective import Objective

    models.resolve("tiny-llama")  # built (or found in the cache) before loading is refused

    def refuse(*_a, **_k):
        raise AssertionError("the torch model was loaded")

    monkeypatch.setattr(checkpoint, "load_model", refuse)
    monkeypatch.setattr(Objective, "base", refuse)
    space = tmp_path / "quant.yaml"  # every trial weighed by an importance matrix: llama.cpp's, not a torch pass
    space.write_text("techniques:\n  quant.gguf:\n    type: {choices: [Q8_0, Q4_0]}\n    imatrix: true\n"
                     "    imatrix_samples: 2\n")  # fmt: skip
    out = tmp_path / "run"
    result = search(model="tiny-llama", runtime="llama.cpp", space=str(space), trials=3, out=out,
                    fidelity="low", sampler="random", seed=0, budget="size_mb<=0.9x")  # fmt: skip
    assert [t.status for t in result.trials if t.status == "failed"] == [], [t.reason for t in result.trials]
    assert result.best is not None and (out / "checkpoint" / GGUF).is_file()
    assert result.best.steps[0]["params"]["imatrix"] is True
    rebuilt = autoslm.apply_recipe(str(out / "recipe.yaml"), str(tmp_path / "again"))
    assert checkpoint.sha256_file(rebuilt / GGUF) == checkpoint.sha256_file(out / "checkpoint" / GGUF)
    # the model card: the measured figures, and the commands that run it; the rebuilt checkpoint gets the same one
    card = (out / "checkpoint" / "README.md").read_text()
    assert f"llama-server -m {GGUF} -c 4096 -t 2" in card and "ollama create tiny-llama-autoslm" in card
    assert f"| {result.best.metrics['size_mb']:.2f} (" in card and "quant.gguf(type=" in card
    assert (out / "checkpoint" / "Modelfile").read_text().startswith(f"FROM ./{GGUF}\n")
    assert (rebuilt / "README.md").read_text() == card
    assert "href='checkpoint/README.md'" in (out / "report.html").read_text()
    from autoslm.targets.remote import pack

    with tarfile.open(pack(out / "checkpoint", tmp_path / "up.tar")) as tf:  # an agent measures the model alone
        assert {"README.md", "Modelfile"}.isdisjoint(tf.getnames()) and GGUF in tf.getnames()

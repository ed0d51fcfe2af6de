from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import run_cli

from autoslm import checkpoint, data
from autoslm.errors import ChecksumError, UserError
from autoslm.models import load_model
from autoslm.recipe import Recipe, RecipeStep, apply_recipe, build_steps, environment

STEPS = [
    {"technique": "prune.depth", "params": {"blocks": 1}},
    {"technique": "quant.dynamic_int8", "params": {"smooth_alpha": 0.5}},
]


def _recipe(tiny, tmp_path: Path, **changes) -> Path:
    recipe = Recipe(
        base_model={"name": "tiny-llama", "source": "tiny", "fingerprint": tiny.fingerprint},
        steps=build_steps(STEPS),
        calibration={"corpus": "calibration", "sha256": data.corpus_sha256("calibration")},
        seed=0,
        environment=environment(),
    ).model_copy(update=changes)
    return recipe.write(tmp_path / "recipe.yaml")


def test_recipe_round_trip_with_explicit_defaults(tiny, tmp_path: Path) -> None:
    path = _recipe(tiny, tmp_path)
    again = Recipe.read(path)
    assert again == Recipe.read(path)
    depth = again.steps[0]
    assert depth.plugin == "autoslm" and depth.params["importance"] == "cosine"  # a default, written out
    assert again.steps[1].params["weight_scheme"] == "per_channel"


def test_apply_twice_is_byte_identical_and_loads_in_fresh_process(tiny, tmp_path: Path) -> None:
    path = _recipe(tiny, tmp_path)
    a = apply_recipe(path, tmp_path / "a")
    b = apply_recipe(path, tmp_path / "b")
    sha_a = checkpoint.sha256_file(a / "model.safetensors")
    assert sha_a == checkpoint.sha256_file(b / "model.safetensors")
    assert Recipe.read(a / "recipe.yaml").checkpoint_sha256 == sha_a
    checkpoint.verify_dir(a)
    ids = [[5, 6, 7, 8, 9]]
    model, _ = checkpoint.load_dir(a)
    with torch.inference_mode():
        expected = model(torch.tensor(ids)).logits[0, -1, :5].tolist()
    code = (
        "import torch, autoslm, json\n"
        f"m, tok = autoslm.load({str(a)!r})\n"
        f"print(json.dumps(m(torch.tensor({ids})).logits[0, -1, :5].tolist()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert __import__("json").loads(out.stdout.strip().splitlines()[-1]) == expected


def test_wrong_base_model_refused_unless_forced(tiny, tmp_path: Path) -> None:
    path = _recipe(tiny, tmp_path, base_model={"name": "tiny-llama", "source": "tiny", "fingerprint": "0" * 64})
    with pytest.raises(UserError, match="pass --force"):
        apply_recipe(path, tmp_path / "x")
    assert (apply_recipe(path, tmp_path / "x", force=True) / "model.safetensors").exists()


def test_missing_plugin_named(tiny, tmp_path: Path) -> None:
    step = RecipeStep(technique="sparse.magic", plugin="autoslm-magic", version="1.2", params={})
    path = _recipe(tiny, tmp_path, steps=[step])
    with pytest.raises(UserError, match=r"pip install 'autoslm-magic==1\.2'"):
        apply_recipe(path, tmp_path / "x")


def test_tampered_checkpoint_rejected(tiny, tmp_path: Path) -> None:
    out = apply_recipe(_recipe(tiny, tmp_path), tmp_path / "a")
    weights = out / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-10] ^= 0x01
    weights.write_bytes(bytes(blob))
    with pytest.raises(ChecksumError, match="does not match its sha256"):
        load_model(str(out))


def test_cli_apply_errors(tmp_path: Path) -> None:
    proc = run_cli("apply", str(tmp_path / "none.yaml"), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("schema_version: 1\nsteps: nope\n")
    proc = run_cli("apply", str(bad), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "is invalid" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_recipe_records_config_versions_and_refuses_other_schemas(tiny, tmp_path: Path) -> None:
    import yaml

    path = _recipe(tiny, tmp_path)
    doc = yaml.safe_load(path.read_text())
    assert [s["config_version"] for s in doc["steps"]] == [1, 1]
    path.write_text(yaml.safe_dump({**doc, "schema_version": 2}))
    with pytest.raises(UserError, match="has schema_version 2; this autoslm reads version 1"):
        Recipe.read(path)
    doc["steps"][0]["config_version"] = 3
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(UserError, match=r"'prune\.depth' was written for its config version 3; the installed"):
        apply_recipe(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()

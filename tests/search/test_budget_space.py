from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_cli

from autoslm.errors import UserError
from autoslm.searching.budget import Budget
from autoslm.searching.space import load_space

INFO = {"num_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 64}


def test_budget_absolute_and_relative() -> None:
    b = Budget.parse("decode_ms<=0.6x, memory_mb<=250")
    base = {"decode_ms": 100.0, "memory_mb": 500.0}
    assert b.violations({"decode_ms": 60.0, "memory_mb": 200.0}, base) == {"decode_ms": 0.0, "memory_mb": -0.2}
    assert b.violations({"decode_ms": 90.0, "memory_mb": 300.0}, base)["decode_ms"] == pytest.approx(0.5)
    assert str(b) == "decode_ms<=0.6x,memory_mb<=250"


def test_budget_relative_to_named_presets() -> None:
    b = Budget.parse("size_mb<=Q4_K_M, decode_ms<=0.9xQ8_0, bpw<=4.5")
    assert str(b) == "size_mb<=Q4_K_M,decode_ms<=0.9xQ8_0,bpw<=4.5" and b.references == ("Q4_K_M", "Q8_0")
    assert str(Budget.parse(str(b))) == str(b)  # stored settings parse back to the same budget
    base = {"size_mb": 500.0, "decode_ms": 40.0, "bpw": 32.0}
    refs = {"Q4_K_M": {"size_mb": 100.0, "decode_ms": 10.0}, "Q8_0": {"size_mb": 140.0, "decode_ms": 8.0}}
    v = b.violations({"size_mb": 100.0, "decode_ms": 9.0, "bpw": 4.0}, base, refs)
    assert v["size_mb"] == 0.0 and v["decode_ms"] == pytest.approx(9.0 / 7.2 - 1) and v["bpw"] < 0
    with pytest.raises(KeyError, match="needs the measurement of preset Q4_K_M"):
        b.violations({"size_mb": 1.0, "decode_ms": 1.0, "bpw": 1.0}, base)


def test_preset_names_resolve_to_one_step_policies() -> None:
    from autoslm.searching.references import preset_steps

    assert preset_steps("Q4_K_M", "llama.cpp") == [
        {"technique": "quant.gguf", "params": {"type": "Q4_K_M", "imatrix": True}}
    ]  # the part before '+': size and speed do not depend on the importance matrix
    assert preset_steps("Q8_0", "llama.cpp")[0]["params"] == {"type": "Q8_0"}
    with pytest.raises(UserError, match="no technique of the torch runtime provides: use one of"):
        preset_steps("Q4_K_M", "torch")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("size_mb<=400Q4_K_M", "malformed"),
        ("size_mb<=Q4_K_M+imatrix", "malformed"),
        ("size_mb<=0xQ4_K_M", "must be a positive"),
        ("size_mb<=" + "Q" * 70, "malformed"),
        ("decode_ms<0.6", "malformed"),
        ("latency<=3", "unknown"),
        ("decode_ms<=a.bc", "malformed"),  # (a word alone names a preset: refused by the search if unknown)
        ("decode_ms<=0", "must be a positive, finite number"),
        ("decode_ms<=1e999", "must be a positive, finite number"),
        (",,,", "has an empty term"),
        ("decode_ms<=0.5x,,memory_mb<=400", "has an empty term"),
        ("decode_ms<=1,decode_ms<=2", "twice"),
    ],
)
def test_malformed_budgets(text: str, fragment: str) -> None:
    with pytest.raises(UserError, match=fragment):
        Budget.parse(text)


def test_shipped_spaces_load_and_group_exclusive_quantizers() -> None:
    for name in ("default", "quant-only", "prune-quant", "tiny"):
        space = load_space(name, INFO)
        assert space.techniques
    default = load_space("default", INFO)
    assert any(set(g) == {"quant.dynamic_int8", "quant.weight_only", "cast.dtype"} for g in default.groups)
    names = [t.name for t in default.techniques]
    assert names.index("prune.depth") < names.index("distill.kd") < names.index("quant.dynamic_int8")


@pytest.mark.parametrize(
    ("yaml_text", "fragment"),
    [
        ("techniques: [", "not valid YAML"),
        ("foo: 1", "needs a 'techniques:' mapping"),
        ("techniques:\n  quant.magic: {}", "techniques.quant.magic is not installed"),
        ("techniques:\n  prune.depth:\n    blockz: 2", "techniques.prune.depth.blockz is not a parameter"),
        ("techniques:\n  prune.depth:\n    blocks: {int: [5, 1]}", "techniques.prune.depth.blocks"),
        ("techniques:\n  prune.depth:\n    blocks: {range: [0, 1]}", "unknown range"),
        ("techniques:\n  prune.depth:\n    blocks: -3", "techniques.prune.depth.blocks"),
    ],
)
def test_malformed_space_files_name_file_and_key(tmp_path: Path, yaml_text: str, fragment: str) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(yaml_text)
    with pytest.raises(UserError, match=fragment) as info:
        load_space(str(f), INFO)
    assert str(f) in str(info.value)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--budget", "decode_ms<0.5"], "budget term 'decode_ms<0.5' is malformed"),
        (["--recheck-rounds", "-1"], "--recheck-rounds must be at least 0"),
        (["--recheck-margin", "1.5"], "--recheck-margin must be less than 1"),
        (["--space", "nope"], "search space 'nope' not found"),
        (["--trials", "0"], "--trials must be a positive integer"),
        (["--trials", "many"], "Invalid value for '--trials'"),
        (["--sampler", "grid"], "--sampler 'grid' is not known: use one of nsga2, random, tpe"),
        (["--timeout", "-5"], "--timeout must be positive"),
        (["--model", "nope"], "unknown model 'nope'"),
    ],
)
def test_search_cli_one_line_errors(args: list[str], fragment: str, tmp_path: Path) -> None:
    proc = run_cli("search", "--out", str(tmp_path / "run"), *args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], proc.stderr

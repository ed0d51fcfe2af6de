from __future__ import annotations

import json

import pytest
from conftest import run_cli


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["eval", "--model", "nope"], "unknown model 'nope'"),
        (["eval", "--model", "./missing.gguf"], "model path './missing.gguf' does not exist"),
        (["profile", "--model", "/no/such/dir"], "does not exist"),
        (["eval", "--ppl-tokens", "abc"], "Invalid value for '--ppl-tokens'"),
        (["profile", "--threads", "1.5"], "Invalid value for '--threads'"),
        (["profile", "--threads", "0"], "--threads must be a positive integer"),
        (["eval", "--fidelity", "medium"], "unknown fidelity 'medium'"),
        (["frobnicate"], "No such command 'frobnicate'"),
    ],
)
def test_bad_input_gets_one_line_error(args: list[str], fragment: str) -> None:
    proc = run_cli(*args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and fragment in lines[0]


def test_help_teaches() -> None:
    proc = run_cli("--help")
    assert proc.returncode == 0
    for word in ("eval", "profile", "plugins", "smollm2-135m"):
        assert word in proc.stdout
    assert "Example" in run_cli("eval", "--help").stdout


def test_help_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys; from autoslm.cli import app; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_eval_and_profile_on_tiny_llama_json() -> None:
    ev = run_cli("eval", "--model", "tiny-llama", "--fidelity", "low", "--json")
    assert ev.returncode == 0, ev.stderr
    q = json.loads(ev.stdout)
    assert q["ppl"] > 1000 and 0 <= q["hyperbaton_acc"] <= 1 and len(q["fingerprint"]) == 64
    pr = run_cli("profile", "--model", "tiny-llama", "--decode-tokens", "8", "--repeats", "1", "--json")
    assert pr.returncode == 0, pr.stderr
    m = json.loads(pr.stdout)
    assert m["decode_ms"] > 0 and m["memory_mb"] > 0 and m["size_mb"] > 10


@pytest.mark.real
def test_real_model_eval_and_profile_tables() -> None:
    ev = run_cli("eval", "--model", "smollm2-135m", "--ppl-tokens", "1024", "--items", "20")
    assert ev.returncode == 0, ev.stderr
    assert "perplexity (held-out)" in ev.stdout and "cloze accuracy" in ev.stdout
    pr = run_cli("profile", "--model", "smollm2-135m", "--decode-tokens", "8", "--repeats", "1")
    assert pr.returncode == 0, pr.stderr
    for row in ("decode ms/token", "prefill ms", "memory MB", "size MB"):
        assert row in pr.stdout

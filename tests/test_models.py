from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from autoslm import models
from autoslm.errors import UserError


def test_parse_spec_kinds(tmp_path: Path) -> None:
    assert models.parse_spec("smollm2-135m").kind == "builtin"
    assert models.parse_spec("tiny-llama").kind == "tiny"
    assert models.parse_spec("HuggingFaceTB/SmolLM2-135M").kind == "hub"
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text('{"model_type": "llama"}')
    assert models.parse_spec(str(tmp_path / "m")).kind == "dir"
    gguf = tmp_path / "x.gguf"
    gguf.write_bytes(b"GGUF" + b"\x03\x00\x00\x00")  # the magic and a version: what a GGUF starts with
    assert models.parse_spec(str(gguf)).kind == "gguf"


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("nope", "unknown model 'nope'"),
        ("./missing.gguf", "does not exist"),
        ("/no/such/dir", "does not exist"),
    ],
)
def test_bad_specs_name_the_input(spec: str, fragment: str) -> None:
    with pytest.raises(UserError, match=fragment):
        models.parse_spec(spec)


def test_dir_without_config_or_weights_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"no config\.json"):
        models.parse_spec(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(UserError, match="never loads pickled weights"):
        models.load_model(str(tmp_path))


def test_hub_id_offline_gives_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="could not download hub model 'someone/nothing-here'"):
        models.resolve("someone/nothing-here")


def test_tiny_llama_is_small_and_seeded(tiny) -> None:
    params = sum(p.numel() for p in tiny.model.parameters())
    assert 1_000_000 < params < 10_000_000
    assert tiny.model.config.num_hidden_layers == models.TINY_LLAMA["num_hidden_layers"]
    out = tiny.model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 7)


def test_fingerprint_stable_across_loads_and_processes(tiny) -> None:
    again = models.load_model("tiny-llama")
    assert again.fingerprint == tiny.fingerprint
    code = "from autoslm.models import load_model; print(load_model('tiny-llama').fingerprint)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == tiny.fingerprint


def test_fingerprint_changes_with_weights(fresh_tiny) -> None:
    before = fresh_tiny.fingerprint
    with torch.no_grad():
        fresh_tiny.model.model.norm.weight[0] += 1e-3
    assert models.fingerprint(fresh_tiny.model) != before


def test_local_dir_spec_round_trip(tiny, tmp_path: Path) -> None:
    from autoslm import checkpoint

    checkpoint.save_dir(tiny.model, tiny.tokenizer, tmp_path / "ckpt")
    loaded = models.load_model(str(tmp_path / "ckpt"))
    assert loaded.spec.kind == "dir"
    assert loaded.fingerprint == tiny.fingerprint


@pytest.mark.real
def test_smollm2_loads_from_cache_with_real_shape(smollm) -> None:
    cfg = smollm.model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (576, 30, 9, 3)
    assert sum(p.numel() for p in smollm.model.parameters()) == 134_515_008
    assert smollm.tokenizer("Hello world")["input_ids"]


@pytest.mark.real
def test_gguf_path_spec_shares_the_conversion(smollm) -> None:
    gguf = models._builtin_gguf("smollm2-135m")
    spec = models.parse_spec(str(gguf))
    assert spec.kind == "gguf"
    assert models.resolve(spec) == smollm.source_dir
    assert models.load_model(spec).fingerprint == smollm.fingerprint


def test_model_files_need_no_torch_load_and_count_what_the_model_counts(tiny) -> None:
    files = models.load_files("tiny-llama")
    assert files.source_dir == tiny.source_dir and files.config.hidden_size == tiny.model.config.hidden_size
    assert files.num_parameters == models.count_parameters(tiny.model)  # the tied head stored once, counted once
    assert models.model_info(files) == models.model_info(tiny.model)
    assert files.fingerprint == models.files_fingerprint(tiny.source_dir) == models.load_files("tiny-llama").fingerprint
    assert files.tokenizer("hello").input_ids == tiny.tokenizer("hello").input_ids


def _one_tensor_file(directory: Path, header: bytes, data: bytes = b"\0" * 8) -> Path:
    directory.mkdir()
    (directory / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + data)
    return directory


def test_files_fingerprint_follows_the_bytes_and_names(tmp_path: Path) -> None:
    header = json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    one = models.files_fingerprint(_one_tensor_file(tmp_path / "one", header))
    assert one == models.files_fingerprint(_one_tensor_file(tmp_path / "same", header))
    assert one != models.files_fingerprint(_one_tensor_file(tmp_path / "bytes", header, b"\0" * 7 + b"\1"))
    renamed = header.replace(b'"a"', b'"b"')
    assert one != models.files_fingerprint(_one_tensor_file(tmp_path / "name", renamed))


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"", "header is cut or corrupt"),  # empty file
        ((2**63).to_bytes(8, "little"), "header is cut or corrupt"),  # a header length past any file
        (b"\x05\0\0\0\0\0\0\0{oops", "header is not JSON"),  # truncated JSON
        (b"\x02\0\0\0\0\0\0\0[]", "header is not a table"),
        (b"\x1c\0\0\0\0\0\0\0" + b'{"a": {"dtype": "F32"}}     ', "corrupt header entry"),  # no shape or offsets
        (b"\x3e\0\0\0\0\0\0\0" + b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 99]}}', "corrupt header"),
        (b"\x3e\0\0\0\0\0\0\0" + b'{"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 0]}}', "corrupt header"),
    ],
)
def test_files_fingerprint_refuses_a_broken_safetensors_file_in_one_line(tmp_path: Path, raw: bytes, fragment) -> None:
    (tmp_path / "model.safetensors").write_bytes(raw)
    with pytest.raises(UserError, match=fragment) as info:
        models.files_fingerprint(tmp_path)
    assert "\n" not in str(info.value) and "model.safetensors" in str(info.value)


def test_files_fingerprint_of_a_directory_without_weights_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"no \.safetensors weights"):
        models.files_fingerprint(tmp_path)

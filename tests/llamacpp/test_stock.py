"""What stock llama.cpp needs to make a candidate's GGUF: the importance matrix in llama.cpp's own format, the
tensor-type file, the llama-quantize command; kept beside the model, never uploaded to an agent."""

from __future__ import annotations

import json
import shlex
import tarfile
from pathlib import Path

import numpy as np
import pytest

from autoslm import checkpoint
from autoslm.llamacpp import stock
from autoslm.pipeline import Step, plan
from autoslm.runtimes import check_policy, get_runtime
from autoslm.targets.remote import pack

pytest.importorskip("llama_cpp")


def test_the_importance_matrix_file_gives_llama_quantize_the_values_autoslm_quantized_with(tmp_path: Path) -> None:
    from gguf import GGUFReader

    rng = np.random.default_rng(0)
    means = {"blk.0.attn_v.weight": rng.random(64, dtype=np.float32) * 1e3, "output.weight": rng.random(8) * 1e-7}
    path = stock.write_imatrix(tmp_path / stock.IMATRIX_FILE, means, chunks=16, size=256)
    back = stock.read_imatrix(path)
    assert set(back) == set(means)
    for name, values in means.items():  # bit for bit: counts of 1 divide nothing away
        assert np.array_equal(back[name], np.asarray(values, dtype=np.float32))
    reader = GGUFReader(str(path))
    fields = {name: reader.get_field(name).contents() for name in ("general.type", "imatrix.chunk_count")}
    assert fields == {"general.type": "imatrix", "imatrix.chunk_count": 16}
    assert reader.get_field("imatrix.datasets").contents()[0].startswith("autoslm calibration corpus sha256:")


def test_a_quantized_candidate_carries_its_stock_command_and_files(fresh_tiny, tmp_path: Path) -> None:
    steps = [{"technique": "quant.gguf", "params": {"type": "Q4_0", "imatrix": True, "imatrix_samples": 2,
                                                    "imatrix_seq_len": 64, "token_embd_type": "Q8_0",
                                                    "overrides": {"attn_v": "Q8_0", "ffn_down": "Q5_0"}}}]  # fmt: skip
    planned = plan([Step(**s) for s in steps])
    check_policy("llama.cpp", planned)
    directory = tmp_path / "c"
    get_runtime("llama.cpp").save(fresh_tiny.model, fresh_tiny.tokenizer, directory, planned)
    command = json.loads((directory / checkpoint.MANIFEST).read_text())["llama_quantize"]
    assert shlex.split(command) == [
        "llama-quantize", "--imatrix", "imatrix.gguf", "--token-embedding-type", "q8_0",
        "--tensor-type-file", "tensor-types.txt", "model-f32.gguf", "model.gguf", "Q4_0",
    ]  # fmt: skip
    assert (directory / "tensor-types.txt").read_text().split() == [
        r"\.attn_v\.weight$=q8_0",
        r"\.ffn_down\.weight$=q5_0",
    ]
    matrix = stock.read_imatrix(directory / "imatrix.gguf")
    assert "blk.0.attn_v.weight" in matrix and all(np.all(v >= 0) for v in matrix.values())
    assert stock.recorded(directory) == {
        "llama_quantize": command,
        "from": "model-f32.gguf",
        "files": "imatrix.gguf, tensor-types.txt",
    }
    # not the model: outside the manifest, not in size_mb, never uploaded to an agent
    listed = json.loads((directory / checkpoint.MANIFEST).read_text())["files"]
    assert not set(stock.FILES) & set(listed)
    assert checkpoint.weights_size_mb(directory) == (directory / "model.gguf").stat().st_size / 2**20
    with tarfile.open(pack(directory, tmp_path / "up.tar")) as tf:
        assert not set(stock.FILES) & set(tf.getnames()) and "model.gguf" in tf.getnames()

    # saved again without an importance matrix or overrides: the old files go, the command says so
    planned = plan([Step(technique="quant.gguf", params={"type": "Q8_0"})])
    get_runtime("llama.cpp").save(fresh_tiny.model, fresh_tiny.tokenizer, directory, planned)
    assert stock.recorded(directory) == {
        "llama_quantize": "llama-quantize model-f32.gguf model.gguf Q8_0",
        "from": "model-f32.gguf",
    }


def test_an_unquantized_checkpoint_has_no_stock_command(fresh_tiny, tmp_path: Path) -> None:
    get_runtime("llama.cpp").save(fresh_tiny.model, fresh_tiny.tokenizer, tmp_path / "c", [])
    assert stock.recorded(tmp_path / "c") == {} and stock.recorded(tmp_path / "nowhere") == {}

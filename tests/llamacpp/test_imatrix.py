"""The importance matrix llama.cpp computes (autoslm/llamacpp/imatrix.py) against the same statistic taken in torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from autoslm import data
from autoslm.calibration import capture_inputs, run_windows
from autoslm.llamacpp.imatrix import GgmlTensor, _lib, collected, importance_matrix, weight_name
from autoslm.runtimes.llamacpp import f32_export, gguf_linear_names


def _torch_means(model, windows) -> dict[str, np.ndarray]:
    """Mean squared input per column of every linear layer, by forward hooks: the reference."""
    names = gguf_linear_names(model)
    sums: dict[str, torch.Tensor] = {}

    def record(name: str, x: torch.Tensor) -> None:
        sq = x.double().pow(2).sum(0)
        sums[name] = sums[name] + sq if name in sums else sq

    with capture_inputs({n: model.get_submodule(n) for n in names}, record):
        tokens = run_windows(model, windows)
    return {f"{names[n]}.weight": (s / tokens).float().numpy() for n, s in sums.items()}


def test_llama_cpp_imatrix_equals_torch_mean_squared_inputs(fresh_tiny) -> None:
    windows = data.token_windows(fresh_tiny.tokenizer, "calibration", seq_len=64, count=3, seed=0)
    f32 = f32_export(fresh_tiny.model, fresh_tiny.tokenizer) / "f32.gguf"
    ours = importance_matrix(f32, windows.tolist())
    theirs = _torch_means(fresh_tiny.model, windows)
    blocks = {n for n in theirs if n.startswith("blk.")}
    assert blocks and blocks <= set(ours)  # every block weight; the tied output is token_embd in llama.cpp
    assert set(ours) - blocks <= {"output.weight"}
    for name in blocks:
        assert ours[name].dtype == np.float32 and ours[name].shape == theirs[name].shape
        np.testing.assert_allclose(ours[name], theirs[name], rtol=2e-3, atol=1e-6, err_msg=name)


def test_imatrix_refuses_no_windows_and_names_what_it_keeps(fresh_tiny, tmp_path: Path) -> None:
    f32 = f32_export(fresh_tiny.model, fresh_tiny.tokenizer) / "f32.gguf"
    with pytest.raises(ValueError, match="no calibration windows"):
        importance_matrix(f32, [])
    assert weight_name(b"CPU#blk.3.attn_q.weight#0") == "blk.3.attn_q.weight"
    assert weight_name(b"blk.3.ffn_down.weight") == "blk.3.ffn_down.weight"
    assert collected("blk.0.attn_v.weight") and collected("output.weight")
    assert not collected("token_embd.weight") and not collected("")


def test_the_tensor_layout_matches_the_shipped_ggml() -> None:
    import ctypes

    assert _lib().ggml_tensor_overhead() - 32 == ctypes.sizeof(GgmlTensor)

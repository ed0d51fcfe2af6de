"""Helpers for techniques that look at activations on calibration text: hooks that are always removed.

from autoslm.calibration import capture_inputs, run_windows

def record(name, x):                       # x: the module's first input, detached, shape (tokens, features)
    seen[name] = x.abs().amax(0) if name not in seen else torch.maximum(seen[name], x.abs().amax(0))

with capture_inputs({n: model.get_submodule(n) for n in names}, record):
    tokens = run_windows(model, ctx.calibration())
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any


@contextlib.contextmanager
def capture_inputs(modules: Mapping[str, Any], record: Callable[[str, Any], None]) -> Iterator[None]:
    """While the block runs, `record(key, x)` sees the first positional input of `modules[key]` on every forward,
    detached and flattened to (tokens, features). The hooks are removed on exit, also when the block raises."""

    def hook(key: str) -> Any:
        def fn(_module: Any, args: tuple[Any, ...]) -> None:
            x = args[0].detach()
            record(key, x.reshape(-1, x.shape[-1]))

        return fn

    handles = [module.register_forward_pre_hook(hook(key)) for key, module in modules.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def run_windows(model: Any, windows: Any, batch: int = 2) -> int:
    """Forward calibration windows (samples, seq_len) through `model`, `batch` at a time, without gradients or a
    KV cache; returns the number of tokens seen."""
    import torch

    with torch.inference_mode():
        for part in windows.split(batch):
            model(input_ids=part, use_cache=False)
    return int(windows.numel())

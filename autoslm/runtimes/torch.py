"""The `torch` runtime: eager PyTorch (transformers), the model a checkpoint directory holds, loaded as saved.

Runs inside the measuring process (`python -m autoslm.targets.worker`, locally or on an agent's device).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

from autoslm.runtimes import Runtime
from autoslm.targets import MeasureSettings
from autoslm.targets.measure import alternate, measure_loaded, prompts


class TorchRuntime(Runtime):
    name = "torch"
    description = "eager PyTorch (transformers), weights as the checkpoint stores them"

    def version(self) -> dict[str, str]:
        import torch

        return {"torch": torch.__version__.split("+")[0]}

    def preload(self, directory: Path) -> list[str]:
        """torch and transformers (~5 s to import here, most of a small model's measurement), with the modeling
        module of the checkpoint's architecture."""
        import json

        modules = ["torch", "transformers", "transformers.modeling_utils", "transformers.models.auto.modeling_auto"]
        try:
            kind = json.loads((Path(directory) / "config.json").read_text()).get("model_type")
        except (OSError, ValueError, AttributeError):
            kind = None
        if isinstance(kind, str) and kind.isidentifier():
            modules.append(f"transformers.models.{kind}.modeling_{kind}")
        return modules

    def save(self, model: Any, tokenizer: Any, directory: Path, planned: list[Any], **meta: Any) -> Path:
        from autoslm import checkpoint

        return checkpoint.save_dir(model, tokenizer, directory, **meta)

    def evaluate(
        self, model: Any, tokenizer: Any, directory: Path, fidelity: Any, reference: Any = None, keep_topk: int = 0,
        prior: Any = None,
    ) -> Any:  # fmt: skip
        """The model in memory is the one saved (the save/load round trip is exact); None: load it."""
        from autoslm import checkpoint
        from autoslm.evaluate import evaluate

        if model is None:
            model = checkpoint.load_model(Path(directory))
        return evaluate(model, tokenizer, fidelity, reference=reference, keep_topk=keep_topk, prior=prior)

    def measure(self, directory: Path, settings: MeasureSettings) -> dict[str, Any]:
        return measure_checkpoint(directory, settings)

    def measure_pair(self, candidate: Path, baseline: Path, settings: MeasureSettings, rounds: int) -> dict[str, Any]:
        return measure_pair(candidate, baseline, settings, rounds)


def time_decode(model: Any, prompt: Any, new_tokens: int) -> list[float]:
    """Greedy generation with a KV cache; returns ms for each generated token after the first (prefill)."""
    import torch

    times = []
    with torch.inference_mode():
        out = model(input_ids=prompt, use_cache=True)
        cache = out.past_key_values
        nxt = out.logits[:, -1:].argmax(-1)
        for _ in range(new_tokens - 1):
            t0 = time.perf_counter()
            out = model(input_ids=nxt, past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            nxt = out.logits[:, -1:].argmax(-1)
            times.append((time.perf_counter() - t0) * 1000)
    return times


def time_prefill(model: Any, prompt: Any) -> float:
    import torch

    with torch.inference_mode():
        t0 = time.perf_counter()
        model(input_ids=prompt, use_cache=True)
        return (time.perf_counter() - t0) * 1000


def _release_heap() -> None:
    """Give freed heap back to the OS (glibc), so a later allocation shows up as resident memory again."""
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _warm_runtime(directory: Path, decode_prompt: Any, prefill_prompt: Any) -> None:
    """Run a one-layer random model of the same architecture once, then free it.

    The first forward pages in torch's kernels and imports lazy modules (hundreds of MB of shared-library code);
    doing it before the baseline keeps that runtime cost out of the model's memory_mb.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(directory)
    if hasattr(config, "num_hidden_layers"):
        config.num_hidden_layers = 1
    for attr in ("quantization_config", "autoslm"):
        if hasattr(config, attr):
            delattr(config, attr)
    scratch = AutoModelForCausalLM.from_config(config).eval()
    time_decode(scratch, decode_prompt, 3)
    time_prefill(scratch, prefill_prompt)
    del scratch
    _release_heap()


def measure_checkpoint(directory: Path, settings: MeasureSettings) -> dict[str, Any]:
    """Load a checkpoint in this process and measure it. Call in a fresh process for a true memory figure.

    memory_mb = peak resident memory during use (warm-up, decode, prefill) minus the resident memory of the
    process just before the model was loaded (runtime already warm): weights, KV cache, activations and any cache
    a layer builds on its first forward. Transient peaks while loading are not counted.
    """
    import torch

    from autoslm import checkpoint

    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    directory = Path(directory)
    checkpoint.verify_dir(directory)
    _check_context(directory, settings)
    decode_prompt, prefill_prompt = _tensors(prompts(directory, settings))
    _warm_runtime(directory, decode_prompt, prefill_prompt)

    return measure_loaded(
        directory,
        settings,
        lambda: contextlib.nullcontext(checkpoint.load_model(directory, verify=False)),
        lambda model: _runner(model, decode_prompt, prefill_prompt, settings),
    )


def measure_pair(candidate: Path, baseline: Path, settings: MeasureSettings, rounds: int) -> dict[str, Any]:
    """Load both checkpoints in this process and time them alternately (`targets.measure.alternate`)."""
    import torch

    from autoslm import checkpoint

    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    models = {}
    for name, directory in (("baseline", Path(baseline)), ("candidate", Path(candidate))):
        checkpoint.verify_dir(directory)
        _check_context(directory, settings)
        models[name] = checkpoint.load_model(directory, verify=False)
    decode_prompt, prefill_prompt = _tensors(prompts(Path(baseline), settings))
    runs = {name: _runner(m, decode_prompt, prefill_prompt, settings) for name, m in models.items()}
    return alternate(runs["baseline"], runs["candidate"], settings, rounds)


def _check_context(directory: Path, settings: MeasureSettings) -> None:
    """A UserError where decode at `settings.context` would run past the positions the model was trained for."""
    import json

    from autoslm.errors import UserError

    try:
        trained = json.loads((Path(directory) / "config.json").read_text()).get("max_position_embeddings")
    except (OSError, ValueError, AttributeError):
        return
    need = max(settings.prompt_tokens, settings.context + settings.decode_tokens)
    if isinstance(trained, int) and need > trained > 0:
        raise UserError(
            f"--context {settings.context}: the model holds {trained} positions, and timing decode there takes "
            f"{need}; give --context {max(1, trained - settings.decode_tokens)} or less"
        )


def _runner(model: Any, decode_prompt: Any, prefill_prompt: Any, settings: MeasureSettings) -> Any:
    return lambda: (time_decode(model, decode_prompt, settings.decode_tokens), time_prefill(model, prefill_prompt))


def _tensors(ids: tuple[list[int], ...]) -> tuple[Any, ...]:
    import torch

    return tuple(torch.tensor([one], dtype=torch.long) for one in ids)

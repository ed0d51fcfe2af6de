"""The exported checkpoint's model card (`README.md`, and an Ollama `Modelfile` beside a GGUF): the base model, the
policy, what was measured on which target, and the commands that run it.

Everything in it comes from the recipe written beside it, so a checkpoint rebuilt by `autoslm apply` gets the same
card as the searched one.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from autoslm.llamacpp import stock
from autoslm.metrics import all_metrics
from autoslm.pipeline import policy_text
from autoslm.targets import DECODE_CONTEXT

CONTEXT = 4096  # the context the commands ask for when the figures were measured after a short prompt
GGUF = "model.gguf"


def _slug(name: str) -> str:
    """An Ollama model name from the base model's spec ('smollm2-135m', a folder's last part)."""
    base = Path(name.rstrip("/")).name or "model"
    return (re.sub(r"[^a-z0-9._-]+", "-", base.lower()).strip("-.") or "model") + "-autoslm"


def _figures(metrics: dict[str, Any]) -> list[str]:
    base = metrics.get("baseline") or {}

    def row(label: str, value: Any, ref: Any, digits: int) -> str:
        this = "-" if value is None else f"{value:.{digits}f}"
        was = "-" if ref is None else f"{ref:.{digits}f}"
        change = f" ({(value / ref - 1) * 100:+.0f}%)" if value is not None and ref else ""
        return f"| {label} | {this}{change} | {was} |"

    rows = ["| figure | this model | base model |", "|---|---|---|"]
    rows.append(row("perplexity (held-out text)", metrics.get("ppl"), base.get("ppl"), 2))
    if metrics.get("kld_mean") is not None:
        rows.append(f"| KL divergence from the base, mean | {metrics['kld_mean']:.4f} | 0 |")
    for metric in all_metrics().values():
        if metric.name in metrics or metric.name in base:
            rows.append(row(f"{metric.header} ({metric.label})", metrics.get(metric.name), base.get(metric.name), 2))
    return rows


def measured_context(recipe: Any) -> int:
    """The tokens in the KV cache when decode was measured (`--context`; a recipe from before it: the default)."""
    return int(recipe.target.get("context") or DECODE_CONTEXT)


def run_context(recipe: Any) -> int:
    """The context the commands ask for: the measured one where it was set, else CONTEXT."""
    measured = measured_context(recipe)
    return measured if measured > DECODE_CONTEXT else CONTEXT


def modelfile(recipe: Any) -> str:
    threads = recipe.target.get("threads")
    lines = [f"FROM ./{GGUF}", f"PARAMETER num_ctx {run_context(recipe)}"]
    if threads:
        lines.append(f"PARAMETER num_thread {threads}")
    return "\n".join(lines) + "\n"


def render(recipe: Any, directory: Path) -> str:
    """The card for the checkpoint in `directory`, written from its `recipe`."""
    name, target = recipe.base_model["name"], recipe.target
    runtime, threads = target.get("runtime", "torch"), target.get("threads")
    device = target.get("fingerprint") or {}
    versions = ", ".join(f"{k} {v}" for k, v in (target.get("runtime_version") or {}).items())
    measured, ctx = measured_context(recipe), run_context(recipe)
    at = "after a short prompt" if measured <= DECODE_CONTEXT else f"with {measured} tokens in the KV cache"
    where = f"{target.get('kind', 'local')} target" + (f" ({device.get('cpu')})" if device.get("cpu") else "")
    lines = [
        f"# {name}, compressed by autoslm",
        "",
        f"- **Base model:** `{name}` (weights sha256 `{recipe.base_model['fingerprint'][:16]}...`)",
        f"- **Policy:** `{policy_text([s.model_dump() for s in recipe.steps])}` (every parameter in `recipe.yaml`)",
        f"- **Budget:** `{recipe.budget or '(none)'}`",
        f"- **Measured** on the {where} in {runtime}{f' ({versions})' if versions else ''}"
        + (f", {threads} threads" if threads else "")
        + f": decode is ms per generated token {at} (batch 1, greedy, KV cache); memory is the peak resident memory "
        "of the loaded model in use, its KV cache included; perplexity on held-out text.",
        "",
        *_figures(recipe.metrics),
        "",
        "## Run it",
        "",
    ]
    t = f" -t {threads}" if threads else ""
    if (Path(directory) / GGUF).is_file():
        from autoslm.runtimes.llamacpp import CacheSettings

        slug, cache = _slug(name), CacheSettings.of(Path(directory))
        t += cache.flags()  # the KV cache the figures were measured with (kv.cache_type)
        lines += [
            "With llama.cpp (a longer context than the measured one holds a larger KV cache: more memory):"
            if ctx != measured
            else "With llama.cpp, at the context it was measured at:",
            "",
            "```",
            f"llama-server -m {GGUF} -c {ctx}{t}",
            f'llama-cli -m {GGUF} -c {ctx}{t} -p "Once upon a time"',
            "```",
            "",
            "With Ollama (the `Modelfile` beside this card"
            + (
                f"; Ollama sets the KV cache for its whole server: `OLLAMA_FLASH_ATTENTION=1 "
                f"OLLAMA_KV_CACHE_TYPE={cache.type_k.lower()} ollama serve`"
                if cache.type_k == cache.type_v and cache.type_k != "F16"
                else ""
            )
            + "):",
            "",
            "```",
            f"ollama create {slug} -f Modelfile",
            f"ollama run {slug}",
            "```",
        ]
    else:
        lines += [
            "In Python (the weights are safetensors; autoslm rebuilds any module a technique added):",
            "",
            "```python",
            "import autoslm",
            "",
            'model, tokenizer = autoslm.load("path/to/this/folder")',
            'ids = tokenizer("Once upon a time", return_tensors="pt").input_ids',
            "print(tokenizer.decode(model.generate(ids, max_new_tokens=32)[0]))",
            "```",
        ]
    lines += [
        "",
        "## Rebuild it",
        "",
        "```",
        "autoslm apply recipe.yaml --out rebuilt   # the same weights file, byte for byte, or it says why not",
        "```",
        "",
    ]
    command = recipe.stock.get(stock.MANIFEST_KEY)
    if command:
        lines += [
            "With stock llama.cpp (`llama-quantize` of the same llama.cpp version; `--f32` writes the F32 export it "
            "reads; the importance matrix and per-tensor types are the files beside this card):",
            "",
            "```",
            "autoslm apply recipe.yaml --out rebuilt --f32",
            f"cd rebuilt && {command}",
            "```",
            "",
        ]
    return "\n".join(lines)


DOCS = ("README.md", "Modelfile")  # documentation, not the model: outside the manifest, never uploaded to an agent


def write(directory: Path, recipe: Any) -> Path:
    """README.md (and a Modelfile beside a GGUF) into the checkpoint."""
    directory = Path(directory)
    if (directory / GGUF).is_file():
        (directory / "Modelfile").write_text(modelfile(recipe))
    card = directory / "README.md"
    card.write_text(render(recipe, directory))
    return card


__all__ = ["DOCS", "modelfile", "render", "write"]

"""What autoslm's llama.cpp path costs as models grow: each phase of a search, timed, and peak memory per process.

    python benchmarks/scale.py [--models smollm2-135m,gemma3-270m,qwen2.5-0.5b,qwen2.5-1.5b,llama3.2-3b]
                               [--no-sensitivity-above 1.0] [--json out.json]

Models: SmolLM2-135M and Gemma-3-270M with their real weights; random-weight models with the real shapes of
Qwen2.5-0.5B, Qwen2.5-1.5B and Llama-3.2-3B (hidden size, layers, MLP width, heads, vocabulary, tied embeddings),
built from a config and saved in bf16 as users download them (no download: timings and memory need the shapes, not
trained weights). They are built as Llama blocks with SmolLM2's tokenizer (Qwen2's q/k/v biases add 0.1% of the
weights). Each model runs in a fresh process, one phase after another, as a search's trials do:

  load        the model as its files (`load_files`: config, tokenizer; a quantization-only search never loads
              it into torch)
  export      the F32 GGUF every llama.cpp trial starts from (llama.cpp's converter from the weight files, once
              per search; with the weights' fingerprint)
  imatrix     the importance matrix quant.gguf has llama.cpp compute on that GGUF (once per search)
  quantize    llama.cpp's Q4_K_M with that matrix (every trial)
  measure     the local target's measurement of the Q4_K_M file (a fresh process; every trial)
  low / full  quality in llama.cpp at low and full fidelity (every trial; full only if not pruned)
  sensitivity quant.mixed's per-tensor table in torch, the model loaded into torch for it (once per model; skipped
              above --no-sensitivity-above B params)

Peak memory: this process's high-water mark in each phase and over them all (the search process) and the measuring
process's (its fixed start, `forecast.WORKER_START_MB`, plus the model in use as the measurement reports it). Then
the growth of each phase with the parameter count (a power law fitted in log-log), and a 30-trial `mixed-precision`
search estimated from the phases (export + imatrix + sensitivity once, 30 x (quantize + measure + full))
against the goals (0.5B <= 30 min, 1.5B <= 90 min, 3B: finishes). Nothing else should run meanwhile; the output
says what did.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SHAPES: dict[str, dict[str, Any]] = {  # the published configs' shapes
    "qwen2.5-0.5b": {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                     "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
                     "tie_word_embeddings": True, "rope_theta": 1000000.0},
    "qwen2.5-1.5b": {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                     "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936,
                     "tie_word_embeddings": True, "rope_theta": 1000000.0},
    "llama3.2-3b": {"hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 28,
                    "num_attention_heads": 24, "num_key_value_heads": 8, "vocab_size": 128256,
                    "tie_word_embeddings": True, "rope_theta": 500000.0},
}  # fmt: skip
REAL = ("smollm2-135m", "gemma3-270m")
GOALS_MIN = {"qwen2.5-0.5b": 30.0, "qwen2.5-1.5b": 90.0}
TRIALS = 30


def build(name: str, folder: Path) -> Path:
    """A random-weight Llama with `name`'s shapes, saved in bf16 with SmolLM2's tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from autoslm import checkpoint
    from autoslm.models import load_model

    tokenizer = load_model("tiny-llama").tokenizer
    config = LlamaConfig(**SHAPES[name], max_position_embeddings=4096, bos_token_id=1, eos_token_id=2,
                         pad_token_id=2, torch_dtype="bfloat16")  # fmt: skip
    torch.manual_seed(0)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
        for n, p in model.named_parameters():
            if "norm" in n:
                p.fill_(1.0)
    model.tie_weights()
    out = checkpoint.save_dir(model.eval(), tokenizer, folder / name)
    del model
    return out


def one(name: str, sensitivity: bool) -> dict[str, Any]:
    """Every phase on one model, in this (fresh) process."""
    import gc

    from autoslm.evaluate import Fidelity
    from autoslm.models import load_files, load_model
    from autoslm.quiet import quiet_libraries
    from autoslm.runtimes import get_runtime
    from autoslm.runtimes.llamacpp import GGUF, cached_importance_matrix, f32_export, quantize
    from autoslm.searching.forecast import WORKER_START_MB
    from autoslm.targets import MeasureSettings, get_target
    from autoslm.targets.measure import _status_mb, peak_rss_mb, reset_peak_rss, rss_mb

    quiet_libraries()
    folder = Path(tempfile.mkdtemp(prefix="autoslm-scale-"))
    seconds: dict[str, float] = {}
    peaks: dict[str, float] = {}  # this process's resident high-water mark during each phase
    anon: dict[str, float] = {}  # its anonymous resident memory at each phase's end (not file pages: see below)
    spec = name
    if name in SHAPES:
        t0 = time.perf_counter()
        spec = str(build(name, folder))
        seconds["build"] = time.perf_counter() - t0
        gc.collect()
    start_mb = rss_mb()
    reset_peak_rss()

    def timed(phase: str, fn: Any) -> Any:
        reset_peak_rss()
        t0 = time.perf_counter()
        value = fn()
        seconds[phase] = time.perf_counter() - t0
        peaks[phase] = peak_rss_mb()
        anon[phase] = _status_mb("RssAnon")
        print(f"  {name}: {phase} {seconds[phase]:.1f} s (peak {peaks[phase]:.0f} MB, then {rss_mb():.0f} MB, "
              f"{anon[phase]:.0f} MB of it anonymous)", file=sys.stderr, flush=True)  # fmt: skip
        return value

    lm = timed("load", lambda: load_files(spec))
    params = lm.num_parameters
    rt = get_runtime("llama.cpp")
    source = timed("export", lambda: f32_export(lm, lm.tokenizer))
    # quant.gguf's defaults: 16 windows of 256 tokens
    imatrix = timed("imatrix", lambda: cached_importance_matrix(source / "f32.gguf", lm.tokenizer, 16, 256))
    q4 = folder / "q4km"
    q4.mkdir()

    def quantize_q4() -> None:
        quantize(source / "f32.gguf", q4 / GGUF, {"type": "Q4_K_M"}, imatrix)
        for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
            if (source / f).is_file():
                (q4 / f).write_bytes((source / f).read_bytes())
        from autoslm import checkpoint

        checkpoint.write_manifest(q4, [p.name for p in q4.iterdir() if p.is_file()], runtime="llama.cpp")

    timed("quantize", quantize_q4)
    m = timed("measure", lambda: get_target("local").measure(q4, MeasureSettings(runtime="llama.cpp")))
    timed("low", lambda: rt.evaluate(None, lm.tokenizer, q4, Fidelity.preset("low")))
    timed("full", lambda: rt.evaluate(None, lm.tokenizer, q4, Fidelity()))
    if sensitivity:
        from autoslm_plugins.quant_mixed import sensitivity_table

        from autoslm.technique import ApplyContext

        ctx = ApplyContext(tokenizer=lm.tokenizer, seed=0)
        timed("sensitivity", lambda: sensitivity_table(load_model(spec).model, ctx, 2, 128))
    search_peak = max(peaks.values())
    worker_peak = WORKER_START_MB["llama.cpp"] + m.memory_mb
    return {
        "model": name,
        "parameters": params,
        "fp32_mb": params * 4 / 2**20,
        "seconds": seconds,
        "search_process_start_mb": start_mb,
        "search_process_peak_mb": search_peak,
        "phase_peak_mb": peaks,
        "phase_end_anonymous_mb": anon,
        "measuring_process_peak_mb": worker_peak,
        "peak_total_mb": search_peak + worker_peak,
        "decode_ms": m.decode_ms,
        "f32_gguf_mb": (source / "f32.gguf").stat().st_size / 2**20,
    }


def estimate_search_min(row: dict[str, Any]) -> float:
    """Every trial quantized, measured and evaluated in full: a search's full evaluation is handed the low one and
    scores only the rest (`evaluate(prior=low)`), so low + rest = the `full` phase here, which starts from nothing.
    Pruned and infeasible trials cost less: an upper bound."""
    s = row["seconds"]
    once = s["export"] + s["imatrix"] + s.get("sensitivity", 0.0)
    per_trial = s["quantize"] + s["measure"] + s["full"]
    return (once + TRIALS * per_trial) / 60


def fit(rows: list[dict[str, Any]], phase: str) -> tuple[float, float] | None:
    """seconds = a * (parameters / 1e9) ** b, least squares in log-log: (a, b)."""
    import numpy as np

    points = [(r["parameters"] / 1e9, r["seconds"][phase]) for r in rows if r["seconds"].get(phase, 0) > 0]
    if len(points) < 2:
        return None
    x, y = np.log([p[0] for p in points]), np.log([p[1] for p in points])
    b, log_a = np.polyfit(x, y, 1)
    return float(math.exp(log_a)), float(b)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join([*REAL, *SHAPES]))
    ap.add_argument("--no-sensitivity-above", type=float, default=1.0, help="billions of parameters")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--sensitivity", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print("AUTOSLM-SCALE " + json.dumps(one(args.one, args.sensitivity)), flush=True)
        return
    load_before = os.getloadavg()[0]
    rows = []
    for name in args.models.split(","):
        big = name in SHAPES and _billions(name) > args.no_sensitivity_above
        cmd = [sys.executable, __file__, "--one", name, *([] if big else ["--sensitivity"])]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        sys.stderr.write(proc.stderr[-3000:])
        found = [line for line in proc.stdout.splitlines() if line.startswith("AUTOSLM-SCALE ")]
        if not found:
            print(f"{name}: failed (exit {proc.returncode})")
            continue
        row = json.loads(found[0].split(" ", 1)[1])
        row["process_s"] = time.perf_counter() - t0
        rows.append(row)
    phases = ["load", "export", "imatrix", "quantize", "measure", "low", "full", "sensitivity"]
    print(f"\nload average before: {load_before:.2f}, after: {os.getloadavg()[0]:.2f}; cores: {os.cpu_count()}")
    tail = " | search process peak MB | measuring process peak MB | total MB (x fp32) | 30 trials (est.) |"
    print("| model | parameters | " + " | ".join(f"{p} s" for p in phases) + tail)
    print("|---" * (len(phases) + 6) + "|")
    for r in rows:
        s = r["seconds"]
        cells = [f"{s[p]:.1f}" if p in s else "-" for p in phases]
        ratio = r["peak_total_mb"] / r["fp32_mb"]
        print(f"| {r['model']} | {r['parameters'] / 1e6:.0f}M | " + " | ".join(cells)
              + f" | {r['search_process_peak_mb']:.0f} | {r['measuring_process_peak_mb']:.0f} | "
              f"{r['peak_total_mb']:.0f} ({ratio:.1f}x) | {estimate_search_min(r):.0f} min |")  # fmt: skip
    print("\ngrowth, seconds = a x (parameters in billions)^b:")
    for p in phases:
        f = fit(rows, p)
        if f:
            print(f"  {p:<12} a={f[0]:8.2f}  b={f[1]:.2f}")
    for r in rows:
        goal = GOALS_MIN.get(r["model"])
        if goal:
            est = estimate_search_min(r)
            print(f"{r['model']}: 30 trials about {est:.0f} min (estimated from the phases) against the goal of "
                  f"{goal:.0f} min: {'met' if est <= goal else 'not met'}")  # fmt: skip
    print("\nthe search process's peak MB in each phase (x the fp32 model):")
    for r in rows:
        cells = ", ".join(f"{p} {mb:.0f} ({mb / r['fp32_mb']:.1f}x)" for p, mb in r["phase_peak_mb"].items())
        print(f"  {r['model']}: {cells}")
    print(
        "\nits anonymous resident MB at each phase's end (the rest of its resident memory is file pages: the\n"
        "checkpoint's weights, memory-mapped, and the libraries' code; the kernel drops them when memory is short):"
    )
    for r in rows:
        cells = ", ".join(f"{p} {mb:.0f}" for p, mb in r.get("phase_end_anonymous_mb", {}).items())
        print(f"  {r['model']}: {cells}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


def _billions(name: str) -> float:
    s = SHAPES[name]
    h, i, n, v = s["hidden_size"], s["intermediate_size"], s["num_hidden_layers"], s["vocab_size"]
    kv = h * s["num_key_value_heads"] // s["num_attention_heads"]
    return (v * h + n * (2 * h * h + 2 * h * kv + 3 * h * i)) / 1e9


if __name__ == "__main__":
    main()

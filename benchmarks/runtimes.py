"""The same policies in the torch runtime and in llama.cpp, measured side by side in one run.

    python benchmarks/runtimes.py [--model smollm2-135m] [--rounds 2] [--json docs/results/runtimes.json]

Policies (each runtime's nearest equivalent): fp32; bf16 (torch cast.dtype / GGUF BF16); 8-bit (torch dynamic int8
W8A8 and INC weight-only int8 / GGUF Q8_0); torch dynamic int8 with an int8 lm_head (the head dominates Gemma-3's
decode); GGUF Q4_K_M with an importance matrix; depth -4 blocks (fp32 in both; refused in llama.cpp on Gemma-3,
which is printed). Every checkpoint is built once, then
all are measured on this CPU in fresh processes, round by round, in the same interleaved order, so drift of the
machine hits every policy alike; figures are medians over rounds. Quality: held-out perplexity at full fidelity,
computed by each runtime on the same windows. Ratios: each policy against its runtime's fp32, and llama.cpp
against torch for the same policy.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from autoslm.quiet import quiet_libraries

DEPTH4 = [{"technique": "prune.depth", "params": {"blocks": 4}}]
POLICIES: list[tuple[str, list[dict], list[dict]]] = [  # (name, torch steps, llama.cpp steps)
    ("fp32", [], []),
    ("bf16", [{"technique": "cast.dtype"}], [{"technique": "quant.gguf", "params": {"type": "BF16"}}]),
    (
        "int8",
        [{"technique": "quant.dynamic_int8", "params": {"smooth_alpha": 0.5}}],
        [{"technique": "quant.gguf", "params": {"type": "Q8_0"}}],
    ),
    ("int8 weight-only", [{"technique": "quant.weight_only", "params": {"bits": 8}}], []),
    ("int8 + int8 head", [{"technique": "quant.dynamic_int8", "params": {"smooth_alpha": 0.5,
                                                                         "include_lm_head": True}}], []),
    ("Q4_K_M", [], [{"technique": "quant.gguf", "params": {"type": "Q4_K_M", "imatrix": True}}]),
    ("depth -4", DEPTH4, DEPTH4),
]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    quiet_libraries()
    from autoslm.errors import UserError
    from autoslm.models import load_model
    from autoslm.pipeline import Step, apply_planned, plan
    from autoslm.runtimes import check_policy, get_runtime
    from autoslm.targets import MeasureSettings, get_target
    from autoslm.technique import ApplyContext

    print(f"load average at start: {os.getloadavg()[0]:.2f} (nothing else was started by this script)", flush=True)
    target = get_target("local")
    work = Path(tempfile.mkdtemp(prefix="autoslm-runtimes-"))
    built: list[dict] = []
    for name, torch_steps, gguf_steps in POLICIES:
        for runtime, steps in (("torch", torch_steps), ("llama.cpp", gguf_steps)):
            if not steps and name != "fp32":  # no equivalent in this runtime
                continue
            t0 = time.perf_counter()
            base = load_model(args.model)
            planned = plan([Step(**s) for s in steps])
            try:
                check_policy(runtime, planned, base.model)
            except UserError as exc:  # e.g. depth pruning of Gemma-3 in llama.cpp
                print(f"refused {runtime:<9} {name:<18} {exc}", flush=True)
                continue
            ctx = ApplyContext(tokenizer=base.tokenizer, seed=0, teacher_factory=lambda b=base: b.model)
            model = apply_planned(base.model, planned, ctx)
            directory = work / f"{runtime}-{name.replace(' ', '_')}"
            rt = get_runtime(runtime)
            rt.save(model, base.tokenizer, directory, planned)
            q = rt.evaluate(model if runtime == "torch" else None, base.tokenizer, directory, _fidelity())
            built.append({"policy": name, "runtime": runtime, "dir": directory, "ppl": q.ppl, "rounds": []})
            print(f"built {runtime:<9} {name:<18} ppl {q.ppl:8.3f}  ({time.perf_counter() - t0:.0f}s)", flush=True)
    for r in range(args.rounds):
        for b in built if r % 2 == 0 else reversed(built):
            m = target.measure(b["dir"], MeasureSettings(runtime=b["runtime"]))
            b["rounds"].append(m.metrics())
        print(f"round {r + 1}/{args.rounds} measured", flush=True)
    rows = []
    for b in built:
        med = {k: statistics.median(x[k] for x in b["rounds"]) for k in b["rounds"][0]}
        rows.append({"policy": b["policy"], "runtime": b["runtime"], "ppl": b["ppl"], **med})
    ref = {rt: next(x for x in rows if x["runtime"] == rt and x["policy"] == "fp32") for rt in ("torch", "llama.cpp")}
    torch_fp32 = ref["torch"]
    print()
    head = f"{'policy':<18}{'runtime':<11}{'ppl':>9}{'size MB':>9}{'decode ms':>11}{'prefill ms':>12}{'memory MB':>11}"
    print(head + f"{'decode vs own fp32':>20}{'decode vs torch fp32':>22}")
    for x in rows:
        own = ref[x["runtime"]]["decode_ms"] / x["decode_ms"]
        vs_torch = torch_fp32["decode_ms"] / x["decode_ms"]
        print(f"{x['policy']:<18}{x['runtime']:<11}{x['ppl']:>9.3f}{x['size_mb']:>9.1f}{x['decode_ms']:>11.2f}"
              f"{x['prefill_ms']:>12.1f}{x['memory_mb']:>11.0f}{own:>19.2f}x{vs_torch:>21.2f}x")  # fmt: skip
    print()
    for name, *_ in POLICIES:
        pair = {x["runtime"]: x for x in rows if x["policy"] == name}
        if len(pair) == 2:
            t, g = pair["torch"], pair["llama.cpp"]
            print(f"{name}: llama.cpp decodes {t['decode_ms'] / g['decode_ms']:.2f}x faster than torch, prefill "
                  f"{t['prefill_ms'] / g['prefill_ms']:.2f}x, ppl {g['ppl'] / t['ppl'] - 1:+.2%}")  # fmt: skip
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "rounds": args.rounds, "rows": rows}, indent=2))


def _fidelity():
    from autoslm.evaluate import Fidelity

    return Fidelity.preset("full")


if __name__ == "__main__":
    main()

"""bf16 against fp32 in eager torch on this CPU, at 1 and 2 threads: prefill (128 tokens) and decode.

    python benchmarks/bf16_threads.py [--model smollm2-135m] [--rounds 5]

The docs once said this CPU has no bf16 instructions (its flags list avx512_bf16) and `../shared/DATA.md` recorded
bf16 prefill 3.6x faster than fp32 at 1 thread in one probe but 4.3x slower at 2 threads in a benchmark. Both models
are loaded in this process; each round times fp32 and bf16 at each thread count, alternating the order, and the
medians over rounds are printed with their ratio. The CPU flags and the load average are printed too.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from autoslm.quiet import quiet_libraries


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    quiet_libraries()
    import torch

    from autoslm.models import load_model
    from autoslm.targets.measure import cpu_description, prompt_ids

    print(f"load average at start: {os.getloadavg()[0]:.2f} (nothing else was started by this script)")
    cpu = cpu_description()
    flags = " ".join(f for f in cpu["isa"].split() if "bf16" in f or "amx" in f) or "none"
    print(f"cpu: {cpu['cpu']} ({cpu['cpu_id']}); bf16-related flags: {flags}; torch {torch.__version__}")
    lm = load_model(args.model)
    models = {"fp32": lm.model.eval(), "bf16": load_model(args.model).model.to(torch.bfloat16).eval()}
    prompt = torch.tensor([prompt_ids(lm.tokenizer, 128, 0)])
    times: dict[tuple[str, int, str], list[float]] = {}

    def run(name: str, threads: int) -> None:
        torch.set_num_threads(threads)
        model = models[name]
        with torch.inference_mode():
            model(input_ids=prompt)  # warm-up
            t0 = time.perf_counter()
            out = model(input_ids=prompt, use_cache=True)
            times.setdefault((name, threads, "prefill"), []).append((time.perf_counter() - t0) * 1000)
            cache, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
            t0 = time.perf_counter()
            for _ in range(16):
                out = model(input_ids=nxt, past_key_values=cache, use_cache=True)
                cache, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
            times.setdefault((name, threads, "decode"), []).append((time.perf_counter() - t0) * 1000 / 16)

    for r in range(args.rounds):
        order = [(n, t) for t in (1, 2) for n in ("fp32", "bf16")]
        for name, threads in order if r % 2 == 0 else reversed(order):
            run(name, threads)
    header = f"\n{'threads':<9}{'what':<9}{'fp32 ms':>10}{'bf16 ms':>10}{'bf16/fp32':>11}"
    print(f"{header}   (medians of {args.rounds} rounds)")
    for threads in (1, 2):
        for what in ("prefill", "decode"):
            f = statistics.median(times[("fp32", threads, what)])
            b = statistics.median(times[("bf16", threads, what)])
            print(f"{threads:<9}{what:<9}{f:>10.1f}{b:>10.1f}{b / f:>10.2f}x")
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

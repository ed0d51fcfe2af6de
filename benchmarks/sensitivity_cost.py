"""The per-tensor sensitivity table, measured (one forward pass per tensor) against its gradient estimate
(`autoslm.sensitivity.estimate`: every tensor from a few backward passes), on real models: seconds, and how well
the estimate ranks the tensors.

    python benchmarks/sensitivity_cost.py [--models smollm2-135m gemma3-270m] [--draws 2 4 8]
                                          [--samples 2] [--seq-len 128] [--threads 2] [--no-measure-above 1.0]
                                          [--json out.json]

For each model (loaded in torch, fp32, `--threads` threads): the table quant.mixed measures (every block weight
tensor at Q4_0, llama.cpp's own rounding, over `--samples` calibration windows of `--seq-len` tokens: the plugin's
defaults), then the estimate with each `--draws`, diagonal and whole-form, over the same windows. Printed per
estimate: seconds and the ratio to the measured table's, Spearman's rank correlation of the per-value densities
(KLD / values: the ranking quant.mixed splits on) against the measured table, and the overlap of the most
sensitive 15% of the values (what `raise_fraction` 0.15 raises) and the least sensitive 20% (what
`lower_fraction` 0.2 lowers). The issue's bar (#32): Spearman >= 0.9 on SmolLM2 and Gemma-3. Nothing else should
run meanwhile (the load average is printed).

A model may also be one of `benchmarks/scale.py`'s random-weight shapes (qwen2.5-0.5b, qwen2.5-1.5b, llama3.2-3b):
timings need the shapes, not trained weights; above `--no-measure-above` billion parameters only the estimate is
timed (the measured table would take tens of minutes: one forward pass per tensor).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    ap.add_argument("--draws", nargs="+", type=int, default=[2, 4, 8])
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-measure-above", type=float, default=1.0, help="billions of parameters")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    import torch

    from autoslm.quiet import quiet_libraries

    quiet_libraries()
    torch.set_num_threads(args.threads)
    from autoslm_plugins.quant_mixed import PROBE, block_tensors

    from autoslm import sensitivity
    from autoslm.models import load_model
    from autoslm.runtimes.llamacpp import fake_quantize
    from autoslm.sensitivity import SensitivityTable, rank_correlation, split
    from autoslm.technique import ApplyContext

    print(f"load average at start: {os.getloadavg()[0]:.2f} (nothing else was started by this script); "
          f"torch {torch.__version__}, {args.threads} threads", flush=True)  # fmt: skip
    record: dict[str, Any] = {"samples": args.samples, "seq_len": args.seq_len, "threads": args.threads, "models": {}}
    from scale import SHAPES, build

    for spec in args.models:
        rows: list[dict[str, Any]] = []
        folder = Path(tempfile.mkdtemp(prefix="autoslm-sensitivity-"))
        lm = load_model(str(build(spec, folder)) if spec in SHAPES else spec)
        model = lm.model.float().eval()
        windows = ApplyContext(tokenizer=lm.tokenizer, seed=0).calibration(samples=args.samples, seq_len=args.seq_len)
        found = block_tensors(model)
        tensors = {module: name for name, (module, _, _) in found.items()}
        numel = {name: n for name, (_, n, _) in found.items()}

        def perturb(_name: str, w: Any) -> Any:
            return fake_quantize(w, PROBE)

        params = sum(p.numel() for p in model.parameters())
        if params / 1e9 > args.no_measure_above:
            print(f"\n{spec}: {len(tensors)} tensors, {windows.numel()} tokens; measured table skipped", flush=True)
            for draws in args.draws:
                t0 = time.perf_counter()
                sensitivity.estimate(model, windows, tensors, perturb, draws=draws)
                rows.append({"draws": draws, "diagonal": True, "seconds": time.perf_counter() - t0})
                print(f"  estimate, {draws} draws, diagonal: {rows[-1]['seconds']:.1f} s", flush=True)
            record["models"][spec] = {"tensors": len(tensors), "parameters": params, "estimates": rows}
            del lm, model
            continue
        t0 = time.perf_counter()
        measured = sensitivity.measure(model, windows, tensors, perturb)
        full_s = time.perf_counter() - t0
        names = sorted(measured)
        table = SensitivityTable(probe=PROBE, tokens=int(windows.numel()), seconds=full_s, fingerprint="", kld=measured,
                                 numel=numel)  # fmt: skip
        raised, lowered = split(table, 0.15, 0.2)
        print(f"\n{spec}: {len(names)} tensors, {windows.numel()} tokens; measured table {full_s:.1f} s", flush=True)
        for draws in args.draws:
            for diagonal in (True, False):
                t0 = time.perf_counter()
                guess = sensitivity.estimate(model, windows, tensors, perturb, draws=draws, diagonal=diagonal)
                seconds = time.perf_counter() - t0
                est = SensitivityTable(probe=PROBE, tokens=0, seconds=seconds, fingerprint="", kld=guess, numel=numel)
                rho = rank_correlation(table, est)
                up, down = split(est, 0.15, 0.2)
                row = {"draws": draws, "diagonal": diagonal, "seconds": seconds, "spearman": rho,
                       "raised_overlap": len(up & raised) / max(1, len(raised)),
                       "lowered_overlap": len(down & lowered) / max(1, len(lowered)),
                       "kld_ratio_median": sorted(guess[n] / max(measured[n], 1e-12) for n in names)[len(names) // 2],
                       }  # fmt: skip
                rows.append(row)
                print(f"  estimate, {draws} draws, {'diagonal' if diagonal else 'whole form'}: {seconds:.1f} s "
                      f"({full_s / seconds:.1f}x faster), Spearman {rho:.3f}, top-15% overlap "
                      f"{row['raised_overlap'] * 100:.0f}%, bottom-20% overlap {row['lowered_overlap'] * 100:.0f}%, "
                      f"median estimate/measured {row['kld_ratio_median']:.2f}", flush=True)  # fmt: skip
        record["models"][spec] = {"tensors": len(names), "parameters": params, "measured_s": full_s,
                                  "estimates": rows}  # fmt: skip
        del lm, model
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()

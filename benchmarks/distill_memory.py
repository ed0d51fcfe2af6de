"""What distillation (`distill.kd`) holds in memory with each optimizer, and the perplexity each reaches.

    python benchmarks/distill_memory.py [--model smollm2-135m] [--blocks 6] [--steps 50] [--lr 5e-5] [--json out.json]

As a search's process holds it: the base model (the teacher, shared), a trial's copy with `--blocks` of its blocks
removed (`prune.depth`), then `distill.kd` on calibration text. Each optimizer runs in a fresh process:

  adamw      two fp32 values of state per trained value (the student's size twice over)
  adafactor  a row and a column per matrix (torch.optim.Adafactor), each tensor's rate set so its step per value
             is `lr`, as AdamW's

Printed per optimizer: the distillation's seconds, the process's peak resident MB during it, what it added to what
the process held before it (base + student), and the held-out perplexity after it (full fidelity's windows, the
same for all); and the pruned student's perplexity before any distillation. Nothing else should run meanwhile; the
load average is printed before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

OPTIMIZERS = ["adamw", "adafactor"]


def one(model: str, blocks: int, steps: int, lr: float, optimizer: str) -> dict[str, Any]:
    """One distillation in this (fresh) process ('none': the pruned student's perplexity alone)."""
    import torch

    from autoslm.evaluate import Fidelity, perplexity
    from autoslm.models import load_model
    from autoslm.pipeline import Step, apply_planned, plan
    from autoslm.quiet import quiet_libraries
    from autoslm.targets.measure import peak_rss_mb, reset_peak_rss, rss_mb
    from autoslm.technique import ApplyContext

    quiet_libraries()
    torch.set_num_threads(2)
    base = load_model(model)
    student = load_model(model)
    ctx = ApplyContext(tokenizer=base.tokenizer, seed=0, teacher_factory=lambda: base.model)
    pruned = apply_planned(student.model, plan([Step(technique="prune.depth", params={"blocks": blocks})]), ctx)
    fp32_mb = sum(p.numel() for p in base.model.parameters()) * 4 / 2**20
    row: dict[str, Any] = {"optimizer": optimizer, "fp32_mb": fp32_mb}
    if optimizer != "none":
        step = Step(technique="distill.kd", params={"steps": steps, "lr": lr, "optimizer": optimizer})
        before = rss_mb()
        reset_peak_rss()
        t0 = time.perf_counter()
        pruned = apply_planned(pruned, plan([step]), ctx)
        row.update(seconds=time.perf_counter() - t0, peak_mb=peak_rss_mb(), before_mb=before)
        row["added_mb"] = row["peak_mb"] - before
    row["ppl"] = perplexity(pruned, base.tokenizer, Fidelity())
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--blocks", type=int, default=6)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        row = one(args.model, args.blocks, args.steps, args.lr, args.one)
        print("AUTOSLM-KD " + json.dumps(row), flush=True)
        return
    print(f"load average before: {os.getloadavg()[0]:.2f} (nothing else was started by this script)", flush=True)
    rows = []
    for name in ["none", *OPTIMIZERS]:
        cmd = [sys.executable, __file__, "--one", name, "--model", args.model, "--blocks", str(args.blocks),
               "--steps", str(args.steps), "--lr", str(args.lr)]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(next(x for x in out.splitlines() if x.startswith("AUTOSLM-KD ")).split(" ", 1)[1]))
    fp32 = rows[0]["fp32_mb"]
    print(f"{args.model} (fp32 {fp32:.0f} MB), prune.depth(blocks={args.blocks}) then distill.kd(steps={args.steps}, "
          f"lr={args.lr:g}):")  # fmt: skip
    print(f"  no distillation: ppl {rows[0]['ppl']:.2f}")
    for r in rows[1:]:
        print(f"  {r['optimizer']:9s}: {r['seconds']:5.1f} s, peak {r['peak_mb']:5.0f} MB ({r['peak_mb'] / fp32:.2f}x "
              f"fp32), +{r['added_mb']:4.0f} MB over base + student ({r['added_mb'] / fp32:.2f}x), "
              f"ppl {r['ppl']:.2f}")  # fmt: skip
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "blocks": args.blocks, "steps": args.steps,
                                         "lr": args.lr, "rows": rows}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()

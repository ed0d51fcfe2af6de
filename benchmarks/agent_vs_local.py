"""Does a measurement through `autoslm agent` agree with a local one? Same checkpoint, same machine, interleaved.

    python benchmarks/agent_vs_local.py [--model smollm2-135m] [--rounds 3]

Starts an agent on loopback, then alternates local and agent measurements of the same checkpoint (each in its own
fresh process, as always) and prints each figure's median over the rounds and the agent/local ratio. The agent
adds the upload (a tar of the checkpoint over loopback) and checksum verification, which are outside the timed
region, so the ratios should be 1 within the machine's noise.
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import statistics
import subprocess
import sys
import time

from autoslm.quiet import quiet_libraries


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    quiet_libraries()
    import requests

    from autoslm.models import resolve
    from autoslm.targets import get_target

    directory = resolve(args.model)
    token = secrets.token_hex(16)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    agent = subprocess.Popen(
        [sys.executable, "-m", "autoslm.cli", "agent", "--port", str(port)],
        env={**os.environ, "AUTOSLM_AGENT_TOKEN": token},
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                requests.get(f"{url}/health", timeout=1)
                break
            except requests.RequestException:
                time.sleep(0.2)
        local, remote = get_target("local"), get_target(url, token=token)
        runs: dict[str, list] = {"local": [], "agent": []}
        for r in range(args.rounds):
            for name, target in (
                (("local", local), ("agent", remote)) if r % 2 == 0 else (("agent", remote), ("local", local))
            ):
                t0 = time.perf_counter()
                runs[name].append(target.measure(directory))
                print(
                    f"round {r + 1} {name:<5} decode {runs[name][-1].decode_ms:7.2f} ms "
                    f"({time.perf_counter() - t0:.0f} s)",
                    flush=True,
                )
    finally:
        agent.terminate()
    print(
        f"\n{args.model}, {args.rounds} rounds, medians; "
        f"device {remote.fingerprint()['id']} ({remote.fingerprint()['cpu']})"
    )
    print(f"{'metric':<14} {'local':>9} {'agent':>9} {'agent/local':>12}")
    for metric in ("decode_ms", "decode_p90_ms", "prefill_ms", "memory_mb", "size_mb"):
        a = statistics.median(getattr(m, metric) for m in runs["local"])
        b = statistics.median(getattr(m, metric) for m in runs["agent"])
        print(f"{metric:<14} {a:9.2f} {b:9.2f} {b / a:12.3f}")


if __name__ == "__main__":
    main()

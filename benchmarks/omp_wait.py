"""OpenMP wait policy of the training child: PASSIVE, ACTIVE and OpenMP's default, on a quiet and on a busy CPU.

The policy is read once when OpenMP starts, so each measurement is a fresh child process
running ``--steps`` fine-tuning steps of the default CPU model (``benchmarks/train.py``'s
step); policies alternate, round after round, so load from elsewhere hits both alike. The
busy case runs one extra process spinning on a core beside the child, as a Dask worker or
a second job does on a shared 2-core machine.

Usage: python -m benchmarks.omp_wait [--rounds 3] [--steps 4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from benchmarks.isolated import run_isolated

# "default": OMP_WAIT_POLICY unset, libgomp spins briefly and then sleeps.
POLICIES = ("PASSIVE", "ACTIVE", "default")


def _child(steps: int) -> None:
    import torch

    from benchmarks.train import make_steps

    step = make_steps("fvlp-vit-tiny", 32, torch.device("cpu"), None, full_context=False)[
        "fvlp finetune, in-batch, ITM"
    ]
    step(0)  # warm-up
    started = time.perf_counter()
    for i in range(steps):
        step(i + 1)
    print(json.dumps({"seconds_per_step": (time.perf_counter() - started) / steps}))


def _measure(policy: str, steps: int) -> float:
    found = run_isolated("benchmarks.omp_wait", steps, env={"OMP_WAIT_POLICY": None if policy == "default" else policy})
    return float(found["seconds_per_step"])


def _rounds(rounds: int, steps: int) -> dict[str, float]:
    times: dict[str, list[float]] = {policy: [] for policy in POLICIES}
    for _ in range(rounds):
        for policy in POLICIES:
            times[policy].append(_measure(policy, steps))
    return {policy: statistics.median(values) for policy, values in times.items()}


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        _child(int(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs; median s/step of fine-tuning (fvlp-vit-tiny, batch 32) over {args.rounds} rounds")
    for load in ("quiet", "one core busy"):
        burner = None
        if load != "quiet":
            burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            found = _rounds(args.rounds, args.steps)
        finally:
            if burner is not None:
                burner.kill()
                burner.wait()
        print(
            f"  {load:<14} "
            + ", ".join(
                f"{policy} {found[policy]:.3f} s ({found[policy] / found['PASSIVE']:.2f}x)" for policy in POLICIES
            )
        )


if __name__ == "__main__":
    main()

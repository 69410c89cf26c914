"""Optimizer step time, default (for-each) vs ``fused=True``, on this machine's CPU or GPU.

    python -m bench.fused_step [--models lenet resnet18] [--rounds 7] [--device cpu]

Times ``opt.step()`` alone (gradients filled once) for SGD and AdamW on each model's parameters,
default and fused alternating round by round; prints the median of the rounds in µs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from d2l_lightning.models import build_model

SIZES = {"lenet": 28, "resnet18": 96}


def step_us(params: list[torch.nn.Parameter], name: str, fused: bool, steps: int) -> float:
    """Mean µs of ``steps`` optimizer steps."""
    cls = torch.optim.SGD if name == "sgd" else torch.optim.AdamW
    opt = cls(params, lr=1e-3, fused=fused or None)
    opt.step()  # state allocated outside the timing
    sync = torch.cuda.synchronize if params[0].is_cuda else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.step()
    sync()
    return (time.perf_counter() - t0) / steps * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["lenet", "resnet18"], choices=sorted(SIZES))
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {a.device}")
    print("| model | optimizer | default µs | fused µs |\n|---|---|---|---|")
    for model in a.models:
        net = build_model(model, num_classes=10, in_channels=1, image_size=SIZES[model])
        params = [q for q in net.to(a.device).parameters()]
        for q in params:
            q.grad = torch.randn_like(q)
        for name in ("sgd", "adamw"):
            times = {False: [], True: []}
            for _ in range(a.rounds):
                for fused in (False, True):
                    times[fused].append(step_us(params, name, fused, a.steps))
            print(f"| {model} | {name} | {statistics.median(times[False]):,.0f} | "
                  f"{statistics.median(times[True]):,.0f} |", flush=True)


if __name__ == "__main__":
    main()

"""CPU training throughput of every registered image model at its recipe resolution.

For each model: random ``(B, C, S, S)`` inputs at the d2l recipe's ``resize`` (else the native
28) and random labels, a few warm-up steps, then timed steps of forward + cross-entropy +
backward + SGD step (the recipe's lr and momentum). Prints a markdown table.

    python -m bench.cnn_throughput [--models lenet,resnet18] [--steps 5 --warmup 2]
        [--batch 32 --batch-large 16 --large-from 224] [--threads N]

Models trained at ``--large-from`` pixels or more (AlexNet, VGG, NiN at 224) use
``--batch-large``, so the run fits in memory on a small machine; the table shows each batch.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from d2l_lightning.models import build_model, get_spec, model_names


def measure(name: str, batch: int, steps: int, warmup: int,
            size: int | None = None) -> dict[str, float | int | str]:
    """Train ``name`` on random data; returns resolution, batch, params and images/s."""
    spec = get_spec(name)
    recipe = spec.recipe("d2l")
    size = size or recipe.resize or 28
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, in_channels=1, image_size=size,
                        **recipe.model_kwargs).train()
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum)
    x = torch.randn(batch, 1, size, size)
    y = torch.randint(0, 10, (batch,))

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"model": name, "section": spec.section, "size": size, "batch": batch,
            "params": params, "ms_per_step": 1000 * median, "img_per_s": batch / median}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", help="comma-separated registry names (default: every image model)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per model (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--batch-large", type=int, default=16,
                   help="batch for models trained at --large-from pixels or more")
    p.add_argument("--large-from", type=int, default=224)
    p.add_argument("--size", type=int, help="override every model's resolution")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    names = a.models.split(",") if a.models else model_names("image_classification")
    for name in names:
        if get_spec(name).task != "image_classification":
            raise SystemExit(f"{name} is not an image classification model")

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}); "
          f"{a.warmup} warm-up + {a.steps} timed steps (median), SGD, random data\n")
    print("| model | d2l § | resolution | batch | params | ms/step | img/s |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        size = a.size or get_spec(name).recipe("d2l").resize or 28
        batch = a.batch_large if size >= a.large_from else a.batch
        r = measure(name, batch, a.steps, a.warmup, size)
        print(f"| {r['model']} | {r['section']} | {r['size']}x{r['size']} | {r['batch']} | "
              f"{r['params'] / 1e6:.2f}M | {r['ms_per_step']:.0f} | {r['img_per_s']:,.1f} |",
              flush=True)


if __name__ == "__main__":
    main()

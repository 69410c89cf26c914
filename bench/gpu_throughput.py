"""GPU fast-path throughput: our Trainer path vs a plain PyTorch loop, same device, same run.

Four workloads (issue 16): LeNet on Fashion-MNIST (28 px, the book's batch 128), ResNet-18 at
96 px (d2l §8.6's resize, batch 128), the LSTM LM (2x200, WikiText-2 vocabulary, pytorch/examples
recipe) and the GPT (The Time Machine, its d2l recipe). Both paths use the fast-path settings:
data resident on the device (``--on-device true``; uint8 images / int64 tokens, batches by
device-side indexing), resize and normalisation on the device, fused optimizer steps,
``bf16-mixed`` and ``channels_last`` for the CNNs on CUDA, and ``torch.compile`` with
``--compile`` (``--compile-mode reduce-overhead`` tries CUDA graphs on both paths).

(ours) the Trainer, DataModule, task module and callbacks that ``train.py`` builds
    (``d2l_lightning.training.run.build_trainer``), timed by a callback from the end of the
    warm-up steps to the last step (the device synchronised at both ends);
    GPT's Time Machine epochs are 38 steps long, so its rate includes the epoch-end work
    (last.ckpt, text samples) that the plain loop does not do;
(plain) a hand-written loop over the same DataModule's resident batches: forward under
    autocast, cross-entropy, ``zero_grad``, backward, clipping if the recipe clips, step.

Rounds alternate which path goes first; each round gives ours/plain, and the median of the
per-round ratios is printed with the targets (ours >= 0.95x plain for ResNet-18 and the LSTM;
LeNet >= 10x the book's 55,297 img/s).

    python -m bench.gpu_throughput --device cuda [--steps 200 --rounds 5 --json out.json]
    python -m bench.gpu_throughput --device cpu --steps 20 --rounds 3 --only lenet,gpt
    python -m bench.gpu_throughput --smoke        # tiny, seconds on a CPU (a test runs it)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback

from d2l_lightning.lit_models.base import build_optimizer, can_fuse
from d2l_lightning.lit_models.language_modeling import detach_state
from d2l_lightning.models import build_model, preprocess_images
from d2l_lightning.training.command_line import config_from_argv
from d2l_lightning.training.run import build_data, build_module, build_trainer

BOOK_LENET = 55_297  #: img/s the book prints for LeNet on a GPU
#: name -> (train.py flags, flags only on CUDA, flags of --smoke, target)
WORKLOADS: dict[str, tuple[list[str], list[str], list[str], str]] = {
    "lenet": (["--model", "lenet", "--batch-size", "128"], [], ["--batch-size", "16"],
              f">= 10x the book's {BOOK_LENET:,} img/s"),
    "resnet18": (["--model", "resnet18", "--resize", "96", "--batch-size", "128"],
                 ["--channels-last"], ["--resize", "32", "--batch-size", "4"],
                 "ours/plain >= 0.95"),
    "lstm": (["--model", "lstm", "--recipe", "wikitext", "--data", "wikitext2"], [],
             ["--batch-size", "4", "--num-steps", "8"], "ours/plain >= 0.95"),
    "gpt": (["--model", "gpt", "--data", "time_machine"], [],
            ["--batch-size", "8", "--num-steps", "16"], "-"),
}


def make_config(name: str, a: argparse.Namespace, run_dir: Path) -> dict:
    """The resolved ``train.py`` config of one workload (shared by both paths)."""
    flags, cuda_flags, smoke_flags, _ = WORKLOADS[name]
    argv = [*flags, *(cuda_flags if a.device == "cuda" else []),
            *(smoke_flags if a.smoke else []),
            "--data-dir", a.data_dir, "--on-device", "true", "--accelerator", a.device,
            "--devices", "1", "--precision", a.precision, "--scheduler", "none",
            "--max-epochs", "100000", "--max-steps", str(a.warmup + a.steps),
            "--limit-val-batches", "0", "--no-test", "--no-progress-bar",
            "--run-dir", str(run_dir)]
    return config_from_argv([*argv, *(["--compile"] if a.compile else [])])


class StepTimer(Callback):
    """Samples/s from the end of step ``warmup`` to the last step (the device synchronised)."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.samples, self.t0, self.t1 = warmup, 0, None, None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """Start the clock after the warm-up; count the targets after it."""
        if trainer.global_step == self.warmup:
            _sync(pl_module.device)
            self.t0 = time.perf_counter()
        elif trainer.global_step > self.warmup:
            self.samples += batch[-1].numel()
            if trainer.global_step == trainer.max_steps:
                _sync(pl_module.device)
                self.t1 = time.perf_counter()

    @property
    def rate(self) -> float:
        return self.samples / (self.t1 - self.t0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Ours:
    """Our path: one task module (compiled once) trained by a fresh Trainer every round."""

    def __init__(self, cfg: dict, a: argparse.Namespace) -> None:
        self.cfg, self.a = cfg, a
        self.dm = build_data(cfg)
        self.dm.prepare_data()
        self.module = build_module(cfg, self.dm.data_info())

    def __call__(self, run_dir: Path) -> float:
        trainer = build_trainer(self.cfg, run_dir, self.module)
        if self.a.compile and self.a.compile_mode != "default":
            self.module.model.compile(mode=self.a.compile_mode)
        timer = StepTimer(self.a.warmup)
        trainer.callbacks.append(timer)
        trainer.fit(self.module, datamodule=self.dm)
        return timer.rate


class Plain:
    """The plain loop: the same model, recipe and resident batches, no Lightning."""

    def __init__(self, cfg: dict, a: argparse.Namespace) -> None:
        self.a, self.device = a, torch.device(a.device)
        dm = build_data(cfg)
        dm.prepare_data()
        dm.setup("fit")
        info = dm.data_info()
        dm.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=self.device),
                                     global_rank=0, world_size=1)
        self.loader = dm.train_dataloader()  # resident on the device (on_device=True)
        self.task, self.info = cfg["task"], info
        kwargs = {k: v for k, v in cfg["model"].items() if k not in ("name", "recipe")}
        if "vocab" in info:
            kwargs["vocab_size"] = len(info["vocab"])
            self.carry = info["carry_state"]
        else:
            kwargs.update(num_classes=info["num_classes"], in_channels=info["in_channels"],
                          image_size=self.task.get("resize") or info["image_size"])
        torch.manual_seed(0)
        self.model = build_model(cfg["model"]["name"], **kwargs).to(self.device)
        if self.task.get("channels_last"):
            self.model = self.model.to(memory_format=torch.channels_last)
        if a.compile:
            self.model.compile(**({} if a.compile_mode == "default" else
                                  {"mode": a.compile_mode}))
        o = cfg["optim"]
        groups = [{"params": [p for p in self.model.parameters() if p.requires_grad]}]
        self.opt = build_optimizer(groups, o["optimizer"], o["lr"], o["weight_decay"],
                                   o["momentum"], fused=can_fuse(groups) or None)
        self.clip = cfg["trainer"]["gradient_clip_val"]
        self.autocast = a.precision == "bf16-mixed"

    def _batches(self):
        epoch = 0
        while True:
            self.loader.sampler.set_epoch(epoch)
            yield from self.loader
            epoch += 1

    def __call__(self, run_dir: Path) -> float:
        model, steps, state, samples = self.model, self.a.warmup + self.a.steps, None, 0
        model.train()
        t0 = None
        for step, batch in enumerate(self._batches()):
            if step == self.a.warmup:
                _sync(self.device)
                t0, samples = time.perf_counter(), 0
            if step == steps:
                break
            x, y = batch
            with torch.autocast(self.device.type, torch.bfloat16, enabled=self.autocast):
                if "vocab" in self.info:
                    logits, state = model(x, state if self.carry else None)
                    state = detach_state(state) if self.carry else None
                else:
                    x = preprocess_images(x, self.info["mean"], self.info["std"],
                                          self.task.get("resize"),
                                          bool(self.task.get("channels_last")))
                    logits = model(x)
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                       y.reshape(-1))
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if self.clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), self.clip)
            self.opt.step()
            samples += y.numel()
        _sync(self.device)
        return samples / (time.perf_counter() - t0)


def bench(name: str, a: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Interleaved rounds of one workload; the per-round rates and the median ratio."""
    cfg = make_config(name, a, root / f"{name}-cfg")
    paths = {"ours": Ours(cfg, a), "plain": Plain(cfg, a)}
    rates: dict[str, list[float]] = {"ours": [], "plain": []}
    for rnd in range(a.rounds):
        for path in (("ours", "plain") if rnd % 2 == 0 else ("plain", "ours")):
            rates[path].append(paths[path](root / f"{name}-{path}-{rnd}"))
        print(f"{name} round {rnd + 1}: ours {rates['ours'][-1]:,.0f}, plain "
              f"{rates['plain'][-1]:,.0f}; ours/plain "
              f"{rates['ours'][-1] / rates['plain'][-1]:.3f}", flush=True)
    ratios = [o / p for o, p in zip(rates["ours"], rates["plain"])]
    return {"rates": rates, "ratios": ratios, "median_ratio": statistics.median(ratios),
            "ours": statistics.median(rates["ours"]), "plain": statistics.median(rates["plain"]),
            "unit": "tokens/s" if name in ("lstm", "gpt") else "img/s",
            "batch_size": cfg["data"]["batch_size"], "precision": cfg["trainer"]["precision"],
            "target": WORKLOADS[name][3]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cuda", "cpu"),
                   default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data-dir", default=os.environ.get("D2L_DATA_DIR", "data"))
    p.add_argument("--steps", type=int, default=200, help="timed steps per path and round")
    p.add_argument("--warmup", type=int, default=20, help="untimed steps first (compilation)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--only", default=",".join(WORKLOADS), help="comma-separated workloads")
    p.add_argument("--precision", help="default: bf16-mixed on cuda, 32-true on cpu")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile both paths (default: on for cuda)")
    p.add_argument("--compile-mode", default="default",
                   choices=("default", "reduce-overhead", "max-autotune-no-cudagraphs"))
    p.add_argument("--smoke", action="store_true", help="tiny sizes, 2 steps, 2 rounds")
    p.add_argument("--json", metavar="OUT", help="also write the numbers as JSON")
    a = p.parse_args(argv)
    unknown = set(a.only.split(",")) - set(WORKLOADS)
    if unknown:
        p.error(f"unknown workload {sorted(unknown)[0]!r}; choose from {', '.join(WORKLOADS)}")
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda, but torch sees no CUDA device")
    a.precision = a.precision or ("bf16-mixed" if a.device == "cuda" else "32-true")
    a.compile = a.device == "cuda" if a.compile is None else a.compile
    if a.smoke:
        a.steps, a.warmup, a.rounds = 2, 1, 2
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")  # ours: no workers
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    root = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    results: dict[str, Any] = {}
    try:
        for name in a.only.split(","):
            results[name] = bench(name, a, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    device = torch.cuda.get_device_name() if a.device == "cuda" else f"{os.cpu_count()} CPUs"
    print(f"\n{device}, torch {torch.__version__}, {a.steps} timed steps (after {a.warmup}) x "
          f"{a.rounds} rounds, compile {a.compile} ({a.compile_mode}), load average "
          f"{os.getloadavg()[0]:.1f}")
    print("| workload | batch | precision | ours | plain | unit | ours/plain (median of "
          "rounds) | target |\n|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        target = r["target"]
        if name == "lenet":
            target += f" (ours = {r['ours'] / BOOK_LENET:.2f}x)"
        print(f"| {name} | {r['batch_size']} | {r['precision']} | {r['ours']:,.0f} | "
              f"{r['plain']:,.0f} | {r['unit']} | {r['median_ratio']:.3f} | {target} |")
    if a.json:
        meta = {"device": device, "torch": torch.__version__, "steps": a.steps,
                "warmup": a.warmup, "rounds": a.rounds, "compile": a.compile,
                "compile_mode": a.compile_mode, "load_average": os.getloadavg()}
        Path(a.json).write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

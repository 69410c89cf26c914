"""Predicted times of the gpu profile's rows on an H200-class GPU, estimated without one.

    python -m bench.gpu_plan [--only PATTERN] [--write-docs]

On a machine with the GPU, ``bench/reproduce.py --plan`` measures each row's warm-up instead;
this is the plan made before a GPU is lent. For each row one training step (the second, after
lazy initialisation) of the row's own config runs here on the CPU inside a FLOP counter and an
operator counter; the step time on the GPU is then modelled as

    max(FLOPs / (EFFICIENCY * PEAK) + ops * KERNEL_S,  ops * LAUNCH_S + LOOP_S)

(the device's work, or the host's launching it, whichever is longer; they overlap), times the
row's training steps, plus its evaluation batches at ``EVAL_FRACTION`` of a step. ``PEAK`` is the
dense bf16 tensor-core rate for ``bf16-mixed`` rows and the TF32 rate otherwise. cuDNN runs a
recurrent layer as one kernel per direction, so the operators inside ``nn.RNNBase`` modules are
counted as 3 per layer instead of the CPU's per-time-step operators. These are assumptions, not
measurements: the real numbers come from ``bench/reproduce.py --budget-s`` on the GPU.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from bench.reproduce import EVAL_FRACTION, resolved, row_argv, select
from bench.rows import ROOT
from bench.tables import replace_between

PEAK = {"bf16-mixed": 989e12, "32-true": 494e12}  # H200 SXM dense bf16 / TF32 FLOP/s
EFFICIENCY = 0.3   # of peak, at the book's batch sizes (128 images, 20 x 35 tokens)
KERNEL_S = 3e-6    # shortest GPU time of one kernel
LAUNCH_S = 5e-6    # host time to launch one kernel (eager PyTorch)
LOOP_S = 250e-6    # Lightning's loop per step on a fast host (bench/lenet_throughput.py's split)
MARK = "gpu-plan"


def measure(row, data_dir: str | None) -> dict:
    """FLOPs and operators of one training step of ``row`` (on this CPU), and its batches."""
    import torch
    from lightning.pytorch.callbacks import Callback
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode

    from d2l_lightning.cli import train
    from d2l_lightning.training import run as run_api

    class Ops(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.count, self.in_rnn, self.rnn_layers = 0, 0, 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.count += not self.in_rnn
            return func(*args, **(kwargs or {}))

    ops, flops, seen = Ops(), FlopCounterMode(display=False), {}

    class Count(Callback):
        def on_fit_start(self, trainer, module):
            for m in module.modules():
                if isinstance(m, torch.nn.RNNBase):
                    m.register_forward_pre_hook(lambda *_: setattr(ops, "in_rnn", 1))
                    m.register_forward_hook(lambda *_: setattr(ops, "in_rnn", 0))
                    ops.rnn_layers += m.num_layers * (2 if m.bidirectional else 1)

        def on_train_batch_start(self, trainer, module, batch, i):
            if i == 1:
                flops.__enter__()
                ops.__enter__()

        def on_train_batch_end(self, trainer, module, outputs, batch, i):
            if i == 1:
                ops.__exit__(None, None, None)
                flops.__exit__(None, None, None)
                dm = trainer.datamodule
                seen.update(train=trainer.num_training_batches,
                            val=len(dm.val_dataloader()), test=len(dm.test_dataloader()))

    build = run_api.build_trainer

    def with_counter(*args, **kwargs):
        trainer = build(*args, **kwargs)
        trainer.callbacks.append(Count())
        return trainer

    run_api.build_trainer = with_counter
    try:
        with tempfile.TemporaryDirectory() as tmp:
            code = train.main([*row_argv(row, Path(tmp) / "run", data_dir), "--max-steps", "2",
                               "--limit-val-batches", "0", "--no-test", "--accelerator", "cpu",
                               "--precision", "32-true", "--run.compile", "false"])
    finally:
        run_api.build_trainer = build
    if code != 0 or not seen:
        raise RuntimeError(f"{row.name}: the counting run failed (exit {code})")
    return {"flops": flops.get_total_flops(), "ops": ops.count + 3 * ops.rnn_layers, **seen}


def estimate(row, m: dict) -> dict:
    """The modelled step time and the row's predicted seconds from :func:`measure`'s counts."""
    tr = resolved(row)["trainer"]
    peak = PEAK.get(tr["precision"], PEAK["32-true"])
    step = max(m["flops"] / (EFFICIENCY * peak) + m["ops"] * KERNEL_S,
               m["ops"] * LAUNCH_S + LOOP_S)
    epochs = max(tr["max_epochs"], 1)
    batches = m["train"] * epochs
    if tr["max_steps"] > 0:
        batches = min(batches, tr["max_steps"])
    evals = m["val"] * epochs + m["test"]
    return {"step_ms": step * 1e3, "steps": batches,
            "seconds": step * (batches + EVAL_FRACTION * evals), **m}


def render(plan: list[tuple]) -> str:
    """The plan as a markdown table, cumulative time included."""
    lines = ["| order | row | GFLOP/step | ops/step | steps | step (ms) | predicted s | "
             "cumulative s |", "|---|---|---|---|---|---|---|---|"]
    total = 0.0
    for i, (row, e) in enumerate(plan, 1):
        total += e["seconds"]
        lines.append(f"| {i} | {row.name} | {e['flops'] / 1e9:,.1f} | {e['ops']:,} | "
                     f"{e['steps']:,} | {e['step_ms']:.2f} | {e['seconds']:,.0f} | "
                     f"{total:,.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", help="comma-separated row names or globs")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--write-docs", action="store_true",
                   help=f"write the table between the {MARK} markers of docs/results.md")
    a = p.parse_args(argv)
    plan = []
    for row in select("gpu", a.only):
        t0 = time.perf_counter()
        plan.append((row, estimate(row, measure(row, a.data_dir))))
        print(f"{row.name}: {plan[-1][1]['seconds']:,.0f} s predicted "
              f"(counted in {time.perf_counter() - t0:.0f} s)", flush=True)
    table = render(plan)
    print(table)
    if a.write_docs:
        doc = ROOT / "docs" / "results.md"
        text = doc.read_text(encoding="utf-8")
        block = (f"<!-- {MARK} begin: generated by bench/gpu_plan.py -->\n{table}\n"
                 f"<!-- {MARK} end -->")
        new = replace_between(text, MARK, block)
        if new is None:
            print(f"docs/results.md has no {MARK} markers; table not written", file=sys.stderr)
            return 1
        doc.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

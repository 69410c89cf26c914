"""LSTM language-model training tokens/s: our Lightning path vs a plain PyTorch loop.

Both train the same registered model with the same recipe on the same batches (our DataModule's
loader), for the same number of steps, in one process, over several rounds whose order
alternates; the median per-round ratio ours/plain is reported against the issue's target
(>= 0.95x).

    python -m bench.lstm_lm_throughput --data-dir ../shared/data [--steps 100 --rounds 6]
    python -m bench.lstm_lm_throughput --recipe wikitext --data wikitext2 --steps 30
    python -m bench.lstm_lm_throughput --scratch-vs-concise --steps 20 --rounds 3
    python -m bench.lstm_lm_throughput --precisions 32-true bf16-mixed --steps 60 --rounds 6

(plain) a hand-written loop: forward with the carried, detached state (sequential sampler),
    cross-entropy, ``zero_grad``, backward, gradient-norm clipping, SGD step.
(--scratch-vs-concise) instead: the plain loop's tokens/s of ``rnn_scratch`` vs ``rnn``,
    ``gru_scratch`` vs ``gru`` and ``lstm_scratch`` vs ``lstm`` with their d2l recipes, interleaved.
(--precisions) instead: our path at each ``--precision``, interleaved, and each one's tokens/s
    over the first's (bf16-mixed on a CPU runs autocast to bfloat16; fast with AVX512-BF16/AMX).
(ours) ``train.py``'s own Trainer, DataModule, LanguageModelingTask, callbacks and CSV logger;
    the rate is the ``TrainingMonitor``'s target tokens/s over training steps (validation disabled).
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from d2l_lightning.lit_models.language_modeling import detach_state
from d2l_lightning.models import build_model
from d2l_lightning.training import fit
from d2l_lightning.training.command_line import config_from_argv
from d2l_lightning.training.console import quiet_warnings
from d2l_lightning.training.run import build_data


def config(a: argparse.Namespace, steps: int, run_dir: Path, precision: str = "32-true") -> dict:
    """``train.py`` configuration of the benchmark (also used by the plain loop)."""
    return config_from_argv([
        "--model", a.model, "--recipe", a.recipe, "--data", a.data, "--data-dir", a.data_dir,
        "--max-epochs", "100000", "--max-steps", str(steps), "--limit-val-batches", "0",
        "--no-test", "--no-progress-bar", "--run-dir", str(run_dir), "--precision", precision])


def plain_loop(cfg: dict, steps: int) -> float:
    """Target tokens/s of a hand-written loop over the same batches."""
    torch.manual_seed(cfg["run"]["seed"])
    dm = build_data(cfg)
    info = dm.data_info()
    options = {k: v for k, v in cfg["model"].items() if k not in ("name", "recipe")}
    model = build_model(cfg["model"]["name"], vocab_size=len(info["vocab"]), **options)
    model.train()
    optim, clip = cfg["optim"], cfg["trainer"]["gradient_clip_val"]
    opt = torch.optim.SGD(model.parameters(), lr=optim["lr"], momentum=optim["momentum"],
                          weight_decay=optim["weight_decay"])
    carry = info["carry_state"] and getattr(model, "recurrent", False)
    loader = dm.train_dataloader()
    tokens, step, epoch = 0, 0, 0
    start = time.perf_counter()
    while step < steps:
        loader.sampler.set_epoch(epoch)
        state = None
        for x, y in loader:
            logits, state = model(x, state if carry else None)
            state = detach_state(state) if carry else None
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            tokens += y.numel()
            step += 1
            if step == steps:
                break
        epoch += 1
    return tokens / (time.perf_counter() - start)


def ours(a: argparse.Namespace, steps: int, run_dir: Path, precision: str = "32-true") -> float:
    """Target tokens/s of ``train.py``'s Trainer over ``steps`` training steps."""
    return fit(config(a, steps, run_dir, precision))["train_samples_per_sec"]


def precisions(a: argparse.Namespace, run_root: Path) -> None:
    """Our path's tokens/s at each of ``a.precisions``, interleaved; ratios to the first."""
    rates: dict[str, list[float]] = {p: [] for p in a.precisions}
    for rnd in range(a.rounds):
        k = rnd % len(a.precisions)
        for prec in a.precisions[k:] + a.precisions[:k]:
            gc.collect()
            time.sleep(0.5)
            rates[prec].append(ours(a, a.steps, run_root / f"{prec}-{rnd}", prec))
        print(f"round {rnd + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in rates.items())
              + f" tokens/s; load average {os.getloadavg()[0]:.2f}", flush=True)
    first = a.precisions[0]
    print(f"\n{a.model} ({a.recipe} recipe) on {a.data}, ours, {a.steps} steps x {a.rounds} "
          f"rounds, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"| precision | tokens/s (median) | / {first} (median of per-round ratios) |\n"
          "|---|---|---|")
    for prec, v in rates.items():
        ratio = statistics.median(x / y for x, y in zip(v, rates[first]))
        print(f"| {prec} | {statistics.median(v):,.0f} | {ratio:.3f} |")


def scratch_vs_concise(a: argparse.Namespace, run_root: Path) -> None:
    """Plain-loop tokens/s of each scratch cell vs its ``nn.RNN/GRU/LSTM`` twin."""
    rates: dict[str, list[float]] = {}
    for rnd in range(a.rounds):
        for cell in ("rnn", "gru", "lstm"):
            names = [f"{cell}_scratch", cell][:: 1 if rnd % 2 == 0 else -1]
            for name in names:
                gc.collect()
                cfg = config(argparse.Namespace(**{**vars(a), "model": name}), a.steps,
                             run_root / name)
                rates.setdefault(name, []).append(plain_loop(cfg, a.steps))
        print(f"round {rnd + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in rates.items()),
              flush=True)
    print(f"\nd2l recipes on {a.data}, plain loop, {a.steps} steps x {a.rounds} rounds, "
          f"{torch.get_num_threads()} threads")
    print("| cell | scratch tokens/s | concise tokens/s | concise / scratch |\n|---|---|---|---|")
    for cell in ("rnn", "gru", "lstm"):
        s, c = statistics.median(rates[f"{cell}_scratch"]), statistics.median(rates[cell])
        print(f"| {cell} | {s:,.0f} | {c:,.0f} | {c / s:.2f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=os.environ.get("D2L_DATA_DIR", "data"))
    p.add_argument("--model", default="lstm")
    p.add_argument("--recipe", default="d2l")
    p.add_argument("--data", default="time_machine")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--scratch-vs-concise", action="store_true",
                   help="compare scratch and concise RNN/GRU/LSTM (plain loop) instead")
    p.add_argument("--precisions", nargs="+", metavar="P",
                   help="compare our path at these --precision values instead")
    a = p.parse_args()
    quiet_warnings()  # the ones train.py drops; any other warning shows
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    run_root = Path(tempfile.mkdtemp(prefix="bench-lm-"))
    if a.scratch_vs_concise:
        scratch_vs_concise(a, run_root)
        return
    if a.precisions:
        try:
            precisions(a, run_root)
        finally:
            shutil.rmtree(run_root, ignore_errors=True)
        return
    cfg = config(a, a.steps, run_root / "cfg")
    if cfg["optim"]["optimizer"] != "sgd":
        raise SystemExit("the plain loop implements SGD only; pick an SGD recipe")
    rates: dict[str, list[float]] = {"ours": [], "plain": []}
    try:
        for rnd in range(a.rounds):
            order = ["ours", "plain"] if rnd % 2 == 0 else ["plain", "ours"]
            for name in order:
                gc.collect()
                time.sleep(0.5)
                rate = (ours(a, a.steps, run_root / f"ours-{rnd}") if name == "ours"
                        else plain_loop(cfg, a.steps))
                rates[name].append(rate)
            print(f"round {rnd + 1}: ours {rates['ours'][-1]:,.0f}, plain "
                  f"{rates['plain'][-1]:,.0f} tokens/s; ours/plain "
                  f"{rates['ours'][-1] / rates['plain'][-1]:.3f}", flush=True)
    finally:
        shutil.rmtree(run_root, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    pairs = [o / q for o, q in zip(rates["ours"], rates["plain"])]
    q1, q2, q3 = statistics.quantiles(pairs, n=4) if len(pairs) > 1 else pairs * 3
    print(f"\n{a.model} ({a.recipe} recipe) on {a.data}: batch {cfg['data']['batch_size']}, "
          f"num_steps {cfg['data'].get('num_steps')}, {a.steps} steps x {a.rounds} rounds, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    print("| path | tokens/s (median) |\n|---|---|")
    for k, v in med.items():
        print(f"| {k} | {v:,.0f} |")
    print(f"ours / plain: median of per-round ratios {q2:.3f} (quartiles {q1:.3f}-{q3:.3f}); "
          f"ratio of medians {med['ours'] / med['plain']:.3f}; target >= 0.95")


if __name__ == "__main__":
    main()

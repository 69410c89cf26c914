"""Time Machine character-level language-model runs for docs/results-language-models.md.

    python -m bench.time_machine_runs --data-dir ../shared/data [--only rnn_scratch,gru]
        [--recipe d2l-0.17] [--extra "--max-epochs 50"]

Each row is one fresh ``train.py`` process. The table gives the training perplexity of the last
epoch (exp of the epoch's mean token loss, as the book's ``train_ch8`` prints it), the held-out
perplexity at the end and at its best epoch, training time and tokens/s. With the default
recipe ``d2l-0.17`` (first 10,000 characters, 500 epochs: the setting of the perplexities the
book prints) the target is the book's printed training perplexity, compared at the book's
printed precision (one decimal).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (row name, model, suffix of the recipe name, the book's training perplexity (upper end))
ROWS: list[tuple[str, str, str, float]] = [
    ("rnn_scratch", "rnn_scratch", "", 1.3),
    ("rnn", "rnn", "", 1.3),
    ("gru_scratch", "gru_scratch", "", 1.1),
    ("gru", "gru", "", 1.1),
    ("lstm_scratch", "lstm_scratch", "", 1.1),
    ("lstm", "lstm", "", 1.1),
    ("deep_lstm", "lstm", "-deep", 1.1),
]


def epoch_metrics(metrics_csv: Path) -> tuple[float, float]:
    """Last epoch's training perplexity and the best validation perplexity of the run."""
    train_ppl, val_ppls = math.nan, []
    with open(metrics_csv) as f:
        for row in csv.DictReader(f):
            if row.get("train/ppl"):
                train_ppl = float(row["train/ppl"])
            if row.get("val/ppl"):
                val_ppls.append(float(row["val/ppl"]))
    return train_ppl, min(val_ppls, default=math.nan)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=os.environ.get("D2L_DATA_DIR", "data"))
    p.add_argument("--only", help="comma-separated row names")
    p.add_argument("--recipe", default="d2l-0.17", help="recipe of every row (deep: +'-deep')")
    p.add_argument("--extra", default="", help="flags added to every row")
    p.add_argument("--runs-root", default=None, help="keep run folders here (default: temp)")
    a = p.parse_args()
    rows = [r for r in ROWS if not a.only or r[0] in a.only.split(",")]
    root = Path(a.runs_root or tempfile.mkdtemp(prefix="tm-runs-"))
    print(f"host: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')}; runs in {root}", flush=True)
    print("| row | command | epochs (steps) | train ppl (last epoch) | held-out ppl (final) | "
          "best held-out | train time (s) | tokens/s | book train ppl | met |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, model, suffix, book in rows:
        args = ["--model", model, "--recipe", a.recipe + suffix, "--data", "time_machine",
                *shlex.split(a.extra)]
        run_dir = root / name
        cmd = [sys.executable, "train.py", *args, "--data-dir", a.data_dir,
               "--run-dir", str(run_dir), "--no-progress-bar"]
        t0 = time.time()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        shown = "python train.py " + " ".join(args)
        if proc.returncode != 0:
            print(f"| {name} | `{shown}` | failed (exit {proc.returncode}): "
                  f"{proc.stderr.strip().splitlines()[-1:]} |", flush=True)
            continue
        res = json.loads((run_dir / "results.json").read_text())
        train_ppl, best = epoch_metrics(run_dir / "metrics.csv")
        tokens_s = res["train_samples_per_sec"]
        met = "—" if a.recipe != "d2l-0.17" else (
            "yes" if round(train_ppl, 1) <= book else "**no**")
        print(f"| {name} | `{shown}` | {res['epochs']} ({res['global_step']}) | {train_ppl:.3f} "
              f"| {res['val/ppl']:.2f} | {best:.2f} | {res['train_time_sec']:.0f} | "
              f"{tokens_s:,.0f} | {book} | {met} |", flush=True)
        print(f"<!-- {name}: wall {time.time() - t0:.0f} s, run {run_dir} -->", flush=True)


if __name__ == "__main__":
    main()

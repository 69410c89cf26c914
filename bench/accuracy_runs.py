"""Full training runs for docs/results.md: each row is a train.py command and its results.

    python -m bench.accuracy_runs --data-dir ../shared/data [--only lenet,lenet_bn] [--extra ...]

Runs the rows one after another (each a fresh ``train.py`` process) and prints a markdown
table: command, epochs, training time, training images/s, final validation and test accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (row name, train.py arguments, target test accuracy or None)
ROWS: list[tuple[str, list[str], float | None]] = [
    ("softmax_regression", ["--model", "softmax_regression"], None),
    ("mlp", ["--model", "mlp"], 0.7),
    ("lenet", ["--model", "lenet"], 0.779),
    ("lenet_bn", ["--model", "lenet_bn"], 0.807),
    ("lenet_bn-modern", ["--model", "lenet_bn", "--recipe", "modern"], 0.90),
    ("lenet-modern-mnist", ["--model", "lenet", "--recipe", "modern", "--data", "mnist"], 0.99),
    ("linear_regression", ["--model", "linear_regression"], None),
    # The modern CNN zoo and attention classifiers (issue 3); rows that fit a CPU session.
    ("row_transformer-mnist", ["--model", "row_transformer"], 0.98),
    ("vit-mnist", ["--model", "vit"], 0.98),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=os.environ.get("D2L_DATA_DIR", "data"))
    p.add_argument("--only", help="comma-separated row names")
    p.add_argument("--extra", default="", help="flags added to every row, e.g. '--precision "
                   "bf16-mixed --accelerator gpu'")
    p.add_argument("--runs-root", default=None, help="keep run folders here (default: temp)")
    a = p.parse_args()
    rows = [r for r in ROWS if not a.only or r[0] in a.only.split(",")]
    root = Path(a.runs_root or tempfile.mkdtemp(prefix="acc-runs-"))
    print(f"host: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"runs in {root}", flush=True)
    print("| row | command | epochs | train time (s) | train img/s | val acc | test acc | "
          "target | wall (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, args, target in rows:
        run_dir = root / name
        cmd = [sys.executable, "train.py", *args, *shlex.split(a.extra), "--data-dir",
               a.data_dir, "--run-dir", str(run_dir), "--no-progress-bar"]
        t0 = time.time()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.time() - t0
        shown = "python train.py " + " ".join(args + shlex.split(a.extra))
        if proc.returncode != 0:
            print(f"| {name} | `{shown}` | failed: {proc.stderr.strip().splitlines()[-1]} |")
            continue
        r = json.loads((run_dir / "results.json").read_text())
        metric = "test/acc" if "test/acc" in r else "test/loss"
        val = r.get("val/acc", r.get("val/loss"))
        tgt = "" if target is None else f"{target:g}"
        print(f"| {name} | `{shown}` | {r['epochs']} | {r['train_time_sec']:.0f} | "
              f"{r['train_samples_per_sec']:,.0f} | {val:.4f} | {r[metric]:.4f} | {tgt} | "
              f"{wall:.0f} |", flush=True)


if __name__ == "__main__":
    main()

"""Kill a run mid-epoch (SIGKILL), resume it from its folder alone, compare with an intact run.

    python -m bench.resume_exactness --data-dir ../shared/data \
        -- --model lenet --recipe modern --max-epochs 2 --limit-train-batches 120

Everything after ``--`` is the run's ``train.py`` flags. Both runs refresh ``last.ckpt`` every
``--every`` steps; the second is killed once its ``last.ckpt`` reaches ``--kill-at`` steps, then
continued with ``train.py --resume last --run-dir RUN`` and nothing else. Prints the final
metrics of both, their difference, and whether ``metrics.csv`` holds every epoch exactly once.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def train(args: list[str], wait: bool = True) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "train.py", *args, "--no-progress-bar"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if wait and proc.wait() != 0:
        raise SystemExit(f"train.py {' '.join(args)} failed:\n{proc.stderr.read()[-2000:]}")
    return proc


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=os.environ.get("D2L_DATA_DIR", "data"))
    p.add_argument("--every", type=int, default=25, help="refresh last.ckpt every N steps")
    p.add_argument("--kill-at", type=int, default=160, help="kill once last.ckpt has N steps")
    p.add_argument("flags", nargs=argparse.REMAINDER, help="-- then the run's train.py flags")
    a = p.parse_args()
    flags = [f for f in a.flags if f != "--"]
    root = Path(tempfile.mkdtemp(prefix="resume-bench-"))
    common = [*flags, "--data-dir", a.data_dir, "--ckpt-every-n-steps", str(a.every)]
    t0 = time.time()
    train([*common, "--run-dir", str(root / "ref")])
    proc = train([*common, "--run-dir", str(root / "run")], wait=False)
    last, killed = root / "run" / "checkpoints" / "last.ckpt", None
    while proc.poll() is None:
        if last.exists():
            try:
                step = torch.load(last, weights_only=True, map_location="cpu")["global_step"]
            except Exception:  # being written
                step = 0
            if step >= a.kill_at:
                proc.send_signal(signal.SIGKILL)
                killed = step
                break
        time.sleep(0.02)
    proc.wait()
    if killed is None:
        raise SystemExit("the run ended before it could be killed: lower --kill-at")
    train(["--resume", "last", "--run-dir", str(root / "run")])
    ref, res = (json.loads((root / d / "results.json").read_text()) for d in ("ref", "run"))
    print(f"train.py {' '.join(flags)}; killed at step {killed} of {ref['global_step']} "
          f"(checkpoint every {a.every}); {time.time() - t0:.0f} s; runs in {root}")
    print("| metric | left alone | killed + resumed | abs. difference |\n|---|---|---|---|")
    for key in sorted(k for k, v in ref.items() if k.startswith(("val/", "test/"))
                      and isinstance(v, float)):
        print(f"| {key} | {ref[key]:.6f} | {res[key]:.6f} | {abs(ref[key] - res[key]):.2e} |")
    with open(root / "run" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    val_key = next(k for k in rows[0] if k.startswith("val/"))
    epochs = [int(r["epoch"]) for r in rows if r.get(val_key)]
    print(f"metrics.csv: validation rows per epoch {epochs} (global steps: {ref['global_step']} "
          f"left alone, {res['global_step']} resumed)")


if __name__ == "__main__":
    main()

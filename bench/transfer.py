"""Transfer table (d2l §14.2): Fashion-MNIST-pretrained LeNet-BN fine-tuned on MNIST label budgets.

    OMP_NUM_THREADS=2 python -m bench.transfer --data-dir ../shared/data [--steps 400]

1. Pretrains the source: ``lenet_bn --recipe modern`` on Fashion-MNIST (``--source-epochs``),
   exported by ``train.py`` like any run.
2. For 1 %, 10 % and 100 % of MNIST's 55,000 training labels (``--data-arg
   train_fraction=F``, seeded), trains three ways for the same ``--steps`` optimizer steps
   (AdamW, cosine, batch 128; a new 10-class head each time):
   *linear probe* (``--init-from EXPORT --freeze backbone``), *fine-tune* (``--init-from
   EXPORT --lr-mult backbone=0.1``) and *scratch* (no initial weights).
3. The image-folder path on real files: ``bench/digit_folder.py`` writes MNIST digits as PNGs
   (300 train / 100 val / 500 test), fine-tuned from the same export and from scratch.

Each run is a fresh ``train.py`` process; the table gives MNIST test accuracy (the official
10,000, or the folder's 500 test PNGs), training time and wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

COMMON = ["--model", "lenet_bn", "--recipe", "modern", "--batch-size", "128"]
MODES = {
    "linear probe": ["--init-from", "{export}", "--task-arg", "new_head=true",
                     "--freeze", "backbone"],
    "fine-tune (backbone lr x0.1)": ["--init-from", "{export}", "--task-arg", "new_head=true",
                                     "--lr-mult", "backbone=0.1"],
    "scratch": [],
}
#: ``--extra-modes``: a cross-check of the factor, the pretrained backbone at the full lr
EXTRA_MODES = {
    "fine-tune (all lr x1)": ["--init-from", "{export}", "--task-arg", "new_head=true"],
}


def train(args: list[str], run_dir: Path, data_dir: str) -> tuple[dict, float, str]:
    """One ``train.py`` run; its results, wall time and the init line it printed."""
    cmd = [sys.executable, "train.py", *args, "--run-dir", str(run_dir), "--no-progress-bar"]
    if "image_folder" not in args:
        cmd += ["--data-dir", data_dir]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    init = next((ln for ln in proc.stdout.splitlines() if ln.startswith("init from")), "")
    return json.loads((run_dir / "results.json").read_text()), wall, init


def slug(label: str) -> str:
    """``fine-tune (backbone lr x0.1)`` -> ``fine-tune-backbone-lr-x0.1``."""
    return re.sub(r"[^a-z0-9.]+", "-", label.lower()).strip("-")


def row(label: str, budget: str, n_train: int, r: dict, wall: float) -> str:
    val = f"{r['val/acc']:.4f}" if "val/acc" in r else "-"  # no epoch ended: never validated
    return (f"| {budget} | {n_train:,} | {label} | {r['global_step']} | {r['epochs']} | "
            f"{val} | **{r['test/acc']:.4f}** | {r['train_time_sec']:.0f} | "
            f"{wall:.0f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=os.environ.get("D2L_DATA_DIR", "data"))
    p.add_argument("--steps", type=int, default=400, help="optimizer steps of every target run")
    p.add_argument("--source-epochs", type=int, default=3)
    p.add_argument("--fractions", default="0.01,0.1,1.0")
    p.add_argument("--val-size", type=int, default=1000,
                   help="validation images (from MNIST's training set; fewer = faster epochs)")
    p.add_argument("--runs-root", help="keep run folders here (default: a temporary folder)")
    p.add_argument("--no-folder", action="store_true", help="skip the image-folder rows")
    p.add_argument("--modes", help="comma-separated methods to run, as slugs (linear-probe, "
                   "fine-tune-backbone-lr-x0.1, scratch, fine-tune-all-lr-x1)")
    p.add_argument("--extra-modes", action="store_true",
                   help="also fine-tune with the backbone at the full learning rate")
    p.add_argument("--source", help="reuse this source run folder instead of pretraining")
    a = p.parse_args()
    root = Path(a.runs_root or tempfile.mkdtemp(prefix="transfer-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"host: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; runs in {root}",
          flush=True)
    source = Path(a.source) if a.source else root / "source-fashion_mnist"
    if a.source:
        r, wall = json.loads((source / "results.json").read_text()), 0.0
    else:
        r, wall, _ = train([*COMMON, "--data", "fashion_mnist", "--max-epochs",
                            str(a.source_epochs)], source, a.data_dir)
    export = str(source / "export")
    print(f"source: lenet_bn modern on Fashion-MNIST, {r['epochs']} epochs, "
          f"test acc {r['test/acc']:.4f}, {r['train_time_sec']:.0f} s train, {wall:.0f} s wall; "
          f"export {export}", flush=True)
    steps = ["--max-steps", str(a.steps), "--max-epochs", "100000"]
    modes = {**MODES, **(EXTRA_MODES if a.extra_modes else {})}
    if a.modes:
        modes = {k: v for k, v in modes.items() if slug(k) in a.modes.split(",")}
    print("\n| labels | train images | method | steps | epochs | val acc | test acc | "
          "train (s) | wall (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for fraction in map(float, a.fractions.split(",")):
        for label, extra in modes.items():
            args = [*COMMON, "--data", "mnist", "--val-size", str(a.val_size), "--data-arg",
                    f"train_fraction={fraction:g}", *steps,
                    *(x.format(export=export) for x in extra)]
            name = f"mnist-{fraction:g}-{slug(label)}"
            r, wall, _ = train(args, root / name, a.data_dir)
            print(row(label, f"{fraction:.0%}", r["dataset_sizes"]["train"], r, wall),
                  flush=True)
    if a.no_folder:
        return
    from bench.digit_folder import write_digit_folder

    folder = root / "digits-png"
    if not folder.exists():
        write_digit_folder(folder, a.data_dir, 300, 100, 500)
    print(f"\nimage folder: {folder} (300 train / 100 val / 500 test MNIST PNGs)")
    print("| labels | train images | method | steps | epochs | val acc | test acc | "
          "train (s) | wall (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for augment in ("false", "true"):
        for label, extra in MODES.items():
            if label == "linear probe":
                continue
            args = [*COMMON, "--data", "image_folder", "--data-dir", str(folder), "--data-arg",
                    f"augment={augment}", "--data-arg", "min_crop=0.6", "--data-arg",
                    "flip=false", *steps,
                    *(x.format(export=export) for x in extra)]
            r, wall, init = train(args, root / f"folder-{augment}-{slug(label)}",
                                  a.data_dir)
            shown = f"{label}, augment={augment}"
            print(row(shown, "PNG folder", r["dataset_sizes"]["train"], r, wall), flush=True)
            if init:
                print(f"<!-- {init} -->")


if __name__ == "__main__":
    main()

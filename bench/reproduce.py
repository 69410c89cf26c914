"""One command reproduces the results tables of ``docs/`` (rows in ``bench/rows.py``).

    python -m bench.reproduce [--device-profile cpu|gpu] [--only PATTERN] [--budget-s N]
    python -m bench.reproduce --smoke          # every row for a couple of steps, in-process
    python -m bench.reproduce --plan           # predicted times only (a timed warm-up each)

Each row is ``python train.py --config CONFIG --run-dir RUNS/PROFILE/DATA/STEM``, run as its own
process. When it finishes, its ``results.json`` numbers, the command, the wall time, the
hardware and the software versions are kept in ``docs/records/PROFILE/`` and the tables of
``docs/`` are regenerated from the records (see ``bench/tables.py``). Re-running skips a row
whose run folder is complete for the same config; a row killed after its first checkpoint is
resumed. With ``--budget-s`` each row first trains a few steps (a timed warm-up on this
hardware), and a row whose predicted time does not fit what is left is skipped and listed.
"""

from __future__ import annotations

import argparse
import fnmatch
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.rows import ROOT, ROWS, Row
from bench.tables import RECORDS, hardware, update_docs, write_record
from d2l_lightning.training.hparams import versions

#: evaluation batches cost about this fraction of a training step (forward only, no update)
EVAL_FRACTION = 0.35
#: flags that make every row tiny in ``--smoke``
SMOKE_FLAGS = ["--max-epochs", "1", "--max-steps", "-1", "--limit-train-batches", "2",
               "--limit-val-batches", "1", "--limit-test-batches", "1",
               "--batch-size", "4"]


@dataclass
class Prediction:
    """A timed warm-up's extrapolation to the whole row."""

    seconds: float
    step_s: float
    startup_s: float
    train_batches: int
    warmup_wall_s: float


def select(profile: str, only: str | None) -> list[Row]:
    """The profile's rows (in run order) whose name matches one of the comma-separated globs."""
    rows = [r for r in ROWS if r.profile == profile]
    if only:
        pats = [p if any(c in p for c in "*?[") else f"*{p}*" for p in only.split(",")]
        rows = [r for r in rows if any(fnmatch.fnmatch(r.name, p) for p in pats)]
    return rows


def row_argv(row: Row, run_dir: Path, data_dir: str | None) -> list[str]:
    """``train.py`` arguments of ``row`` (``--data-dir`` only for data read from files)."""
    argv = ["--config", row.config, "--run-dir", str(run_dir)]
    return argv + (["--data-dir", data_dir] if data_dir and _reads_files(row.config) else [])


def resolved(row: Row) -> dict[str, Any]:
    """``row``'s config file resolved as ``train.py`` resolves it (a fresh copy)."""
    return json.loads(_resolved(row.config))


def _resolved(config: str) -> str:
    """The resolved config as JSON, cached by the file's text (an edited file resolves anew)."""
    from d2l_lightning.training.config import config_path

    return _resolve_text(config, config_path(config).read_text(encoding="utf-8"))


@functools.cache
def _resolve_text(config: str, text: str) -> str:
    from d2l_lightning.training.config import load_config_file, resolve

    return json.dumps(resolve([load_config_file(config)]), sort_keys=True, default=str)


def _reads_files(config: str) -> bool:
    """Whether the config's data takes a data root (synthetic data does not)."""
    return "data_dir" in json.loads(_resolved(config))["data"]


def fingerprint(row: Row) -> str:
    """Hash of the row's resolved config (data and run folders left out)."""
    cfg = resolved(row)
    cfg["data"].pop("data_dir", None)
    cfg["run"].pop("run_dir", None)
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("_D2L_RUN_DIR", None)  # a child run picks its own folder
    return env


def _train(argv: list[str], log: Path) -> tuple[int, float]:
    """Run ``train.py argv`` as a process, output to ``log``; ``(exit code, wall seconds)``."""
    t0 = time.perf_counter()
    with log.open("a", encoding="utf-8") as out:
        out.write(f"\n$ python train.py {' '.join(argv)}\n")
        out.flush()
        code = subprocess.call([sys.executable, "train.py", *argv], cwd=ROOT, env=_env(),
                               stdout=out, stderr=subprocess.STDOUT)
    return code, time.perf_counter() - t0


def predict(row: Row, data_dir: str | None, steps: int, log: Path) -> Prediction | str:
    """Train ``steps`` steps of ``row`` in a scratch folder and extrapolate (or say why not).

    The warm-up's steps give the seconds per training step; the rest of its wall time (start,
    data, sanity validation, export) is counted once. Evaluation batches are counted at
    ``EVAL_FRACTION`` of a step, the test split as one more validation.
    """
    scratch = Path(tempfile.mkdtemp(prefix="reproduce-warmup-"))
    try:
        argv = [*row_argv(row, scratch / "run", data_dir), "--max-steps", str(steps),
                "--no-test", "--max-epochs", "1"]
        code, wall = _train(argv, log)
        results = scratch / "run" / "results.json"
        if code != 0 or not results.is_file():
            return f"warm-up failed (exit {code}; see {log})"
        res = json.loads(results.read_text())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    tr = resolved(row)["trainer"]
    step_s = res["train_time_sec"] / max(res["global_step"] * tr["accumulate_grad_batches"], 1)
    per_epoch = res.get("train_batches_per_epoch", steps)  # after the row's own limit
    batches = per_epoch * max(tr["max_epochs"], 1)
    if tr["max_steps"] and tr["max_steps"] > 0:
        batches = min(batches, tr["max_steps"] * tr["accumulate_grad_batches"])
    epochs = -(-batches // max(per_epoch, 1))
    eval_batches = res.get("val_batches_per_epoch", 0) * (epochs + 1)
    startup = max(wall - res["train_time_sec"], 0.0)
    seconds = startup + step_s * (batches + EVAL_FRACTION * eval_batches)
    return Prediction(seconds, step_s, startup, batches, wall)


def run_row(row: Row, a: argparse.Namespace, left_s: float | None) -> dict[str, Any]:
    """Run (or skip, or resume) one row; return its record."""
    run_dir = Path(a.runs_dir) / row.profile / row.name
    log = run_dir.parent / f"{run_dir.name}.log"
    stamp = run_dir.parent / f"{run_dir.name}.reproduce.json"
    fp = fingerprint(row)
    base = {"row": row.name, "config": row.config, "profile": row.profile,
            "command": f"python train.py --config {row.config}",
            "date": time.strftime("%Y-%m-%d"), "fingerprint": fp}
    if run_dir.exists() and not stamp.is_file():
        return {**base, "status": "skipped", "reason": f"{run_dir} exists but was not made by "
                "bench/reproduce.py; move it away or choose --runs-dir"}
    if stamp.is_file() and json.loads(stamp.read_text()).get("fingerprint") != fp:
        return {**base, "status": "skipped", "reason": f"{run_dir} holds a run of another "
                "version of this config; move it away or choose --runs-dir"}
    results = run_dir / "results.json"
    if results.is_file():
        print(f"{row.name}: complete in {run_dir}", flush=True)
        return _done(base, row, results, json.loads(stamp.read_text()))
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    resume = any(run_dir.glob("checkpoints/*.ckpt"))
    plan: dict[str, Any] = {}
    if left_s is not None and left_s <= 0:
        return {**base, "status": "skipped", "reason": "skipped: --budget-s spent"}
    if left_s is not None and not resume:
        t0 = time.perf_counter()
        pred = predict(row, a.data_dir, a.warmup_steps, log)
        left_s -= time.perf_counter() - t0
        if isinstance(pred, str):
            return {**base, "status": "failed", "reason": pred}
        plan = {"predicted_s": round(pred.seconds, 1), "warmup_s": round(pred.warmup_wall_s, 1),
                "step_s": pred.step_s}
        print(f"{row.name}: predicted {pred.seconds:,.0f} s ({pred.train_batches:,} steps of "
              f"{pred.step_s * 1e3:.1f} ms + {pred.startup_s:.0f} s); {left_s:,.0f} s left",
              flush=True)
        if pred.seconds > left_s:
            return {**base, **plan, "status": "skipped",
                    "reason": f"skipped: predicted {pred.seconds:,.0f} s > {max(left_s, 0):,.0f}"
                              " s left of --budget-s"}
    stamp.write_text(json.dumps({"fingerprint": fp, **plan}))
    argv = (["--resume", "last", "--run-dir", str(run_dir)] if resume
            else row_argv(row, run_dir, a.data_dir))
    print(f"{row.name}: {'resuming' if resume else 'running'} python train.py "
          f"{' '.join(argv)} (log: {log})", flush=True)
    code, wall = _train(argv, log)
    if code != 0 or not results.is_file():
        return {**base, "status": "failed", "reason": f"exit {code}; see {log}"}
    stamp.write_text(json.dumps({"fingerprint": fp, **plan, "wall_s": round(wall, 1)}))
    return _done(base, row, results, json.loads(stamp.read_text()))


def _done(base: dict[str, Any], row: Row, results: Path, stamp: dict[str, Any]) -> dict[str, Any]:
    res = json.loads(results.read_text())
    keep = {k: v for k, v in res.items() if isinstance(v, int | float | str) or k ==
            "dataset_sizes"}
    for k in ("run_dir", "export_dir", "resumed_from"):
        keep.pop(k, None)
    met = row.target.met(res) if row.target else None
    return {**base, "status": "done", "results": keep, "met": met,
            "wall_s": stamp.get("wall_s"), "predicted_s": stamp.get("predicted_s"),
            "hardware": hardware(), "versions": versions()}


def smoke(rows: list[Row], data_dir: str | None, profile: str) -> list[str]:
    """Every row for two training steps in this process; return the failures.

    Without a GPU the GPU rows run on the CPU, uncompiled, in 32-bit: what is checked is that
    each config still resolves, builds its data and model, trains, evaluates and exports.
    """
    import torch

    from d2l_lightning.cli import train
    extra = list(SMOKE_FLAGS)
    if profile == "gpu" and not torch.cuda.is_available():
        extra += ["--accelerator", "cpu", "--precision", "32-true", "--run.compile", "false"]
    failures = []
    with tempfile.TemporaryDirectory(prefix="reproduce-smoke-") as tmp:
        for row in rows:
            t0 = time.perf_counter()
            argv = [*row_argv(row, Path(tmp) / row.name, data_dir), *extra, "--seed", "0"]
            try:
                code = train.main(argv)
            except Exception as e:  # a row that rots: say which, keep going
                code = f"{type(e).__name__}: {e}"
            ok = code == 0 and (Path(tmp) / row.name / "results.json").is_file()
            print(f"smoke {row.name}: {'ok' if ok else f'FAILED ({code})'} "
                  f"{time.perf_counter() - t0:.1f} s", flush=True)
            if not ok:
                failures.append(row.name)
    return failures


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code (1: a row failed)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device-profile", choices=("cpu", "gpu"), default=None,
                   help="the row set sized for this hardware (default: gpu if CUDA is there)")
    p.add_argument("--only", help="comma-separated row names or globs, e.g. 'lenet*,*/gpt'")
    p.add_argument("--budget-s", type=float, default=None,
                   help="skip (and list) rows whose predicted time does not fit what is left")
    p.add_argument("--smoke", action="store_true", help="every row for 2 steps, in-process")
    p.add_argument("--plan", action="store_true", help="print predicted times only")
    p.add_argument("--warmup-steps", type=int, default=20)
    p.add_argument("--runs-dir", default="runs/reproduce")
    p.add_argument("--records-dir", default=str(RECORDS))
    p.add_argument("--data-dir", default=None, help="data root (default: $D2L_DATA_DIR, ./data)")
    p.add_argument("--no-docs", action="store_true", help="keep records; leave docs/ as is")
    p.add_argument("--tables", action="store_true",
                   help="only regenerate the profile's tables of docs/ from the records")
    p.add_argument("--docs-root", default=str(ROOT), help=argparse.SUPPRESS)  # for tests
    a = p.parse_args(argv)
    if a.budget_s is not None and a.budget_s <= 0:
        p.error("--budget-s must be positive")
    if a.device_profile is None:
        import torch

        a.device_profile = "gpu" if torch.cuda.is_available() else "cpu"
    rows = select(a.device_profile, a.only)
    if not rows:
        p.error(f"no {a.device_profile} row matches --only {a.only}")
    if a.smoke:
        failed = smoke(rows, a.data_dir, a.device_profile)
        print(f"smoke: {len(rows) - len(failed)}/{len(rows)} rows ok"
              + (f"; failed: {', '.join(failed)}" if failed else ""))
        return 1 if failed else 0
    if a.plan:
        return _plan(rows, a)
    if a.tables:
        changed = update_docs(a.device_profile, Path(a.records_dir), Path(a.docs_root))
        print("updated: " + (", ".join(map(str, changed)) or "nothing"))
        return 0
    records = Path(a.records_dir)
    print(f"{a.device_profile} profile: {len(rows)} rows; runs in {a.runs_dir}; "
          f"{hardware()}", flush=True)
    start, outcome = time.perf_counter(), {}
    for row in rows:
        left = None if a.budget_s is None else a.budget_s - (time.perf_counter() - start)
        rec = run_row(row, a, left)
        outcome[row.name] = rec
        write_record(row, rec, records)
        if not a.no_docs:
            update_docs(a.device_profile, records, Path(a.docs_root))
    print(f"\n{'row':48} status")
    for name, rec in outcome.items():
        why = rec.get("reason", "")
        print(f"{name:48} {why if why.startswith(rec['status']) else rec['status']}"
              + (f": {why}" if why and not why.startswith(rec["status"]) else ""))
    return 1 if any(r["status"] == "failed" for r in outcome.values()) else 0


def _plan(rows: list[Row], a: argparse.Namespace) -> int:
    log = Path(a.runs_dir) / a.device_profile / "plan.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    total = 0.0
    print(f"{'row':48} {'predicted s':>12} {'cumulative':>11}  (timed warm-up of "
          f"{a.warmup_steps} steps on this machine)", flush=True)
    for row in rows:
        pred = predict(row, a.data_dir, a.warmup_steps, log)
        if isinstance(pred, str):
            print(f"{row.name:48} {pred}", flush=True)
            continue
        total += pred.seconds
        print(f"{row.name:48} {pred.seconds:12,.0f} {total:11,.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

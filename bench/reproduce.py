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
hardware), and a row whose predicted time does not fit what is left is skipped and listed; a
resumed row is predicted for the steps its ``last.ckpt`` has still to go. The budget bounds every
process the command starts: a warm-up or a row still training when it runs out gets SIGTERM
(``train.py`` then writes ``last.ckpt`` and exits 143, so the next run resumes it), and SIGKILL
``GRACE_S`` seconds later if it has not ended.
"""

from __future__ import annotations

import argparse
import fnmatch
import functools
import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
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
#: seconds a process stopped by ``--budget-s`` (SIGTERM) has to write ``last.ckpt`` and exit
GRACE_S = 30.0
#: the training command after ``python`` (tests put a fake of ``train.py`` here)
TRAIN = ["train.py"]
#: why a row is skipped when the budget runs out during its warm-up
WARMUP_CUT = "skipped: --budget-s ran out during the warm-up"


@dataclass
class Prediction:
    """A timed warm-up's extrapolation to the whole row."""

    seconds: float
    step_s: float
    startup_s: float
    train_batches: int
    warmup_wall_s: float
    #: training and validation batches of one epoch
    per_epoch: int = 1
    val_batches: int = 0

    def after(self, done: int) -> Prediction:
        """The prediction for what is left once ``done`` training batches have run (a resume)."""
        left = max(self.train_batches - done, 0)
        epochs = -(-left // max(self.per_epoch, 1))
        seconds = self.startup_s + self.step_s * (
            left + EVAL_FRACTION * self.val_batches * (epochs + 1))
        return replace(self, seconds=seconds, train_batches=left)


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


def _train(argv: list[str], log: Path,
           deadline: float | None = None) -> tuple[int, float, bool]:
    """Run ``train.py argv`` as a process, output to ``log``; ``(exit code, wall s, stopped)``.

    At ``deadline`` (a ``time.perf_counter()`` value) a process still running gets SIGTERM, so
    that it writes ``last.ckpt``, and SIGKILL ``GRACE_S`` seconds later; ``stopped`` says so.
    """
    t0 = time.perf_counter()
    with log.open("a", encoding="utf-8") as out:
        out.write(f"\n$ python train.py {' '.join(argv)}\n")
        out.flush()
        with subprocess.Popen([sys.executable, *TRAIN, *argv], cwd=ROOT, env=_env(),
                              stdout=out, stderr=subprocess.STDOUT) as proc:
            try:
                wait = None if deadline is None else max(deadline - time.perf_counter(), 0.0)
                return proc.wait(wait), time.perf_counter() - t0, False
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGTERM)
                try:
                    code = proc.wait(GRACE_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    code = proc.wait()
            except BaseException:  # Ctrl-C: as subprocess.call, leave no process behind
                proc.kill()
                proc.wait()
                raise
    with log.open("a", encoding="utf-8") as out:
        out.write(f"--budget-s ran out: stopped with SIGTERM (exit {code})\n")
    return code, time.perf_counter() - t0, True


def predict(row: Row, data_dir: str | None, steps: int, log: Path,
            deadline: float | None = None) -> Prediction | str:
    """Train ``steps`` steps of ``row`` in a scratch folder and extrapolate (or say why not).

    The warm-up's steps give the seconds per training step; the rest of its wall time (start,
    data, sanity validation, export) is counted once. Evaluation batches are counted at
    ``EVAL_FRACTION`` of a step, the test split as one more validation. A warm-up still running
    at ``deadline`` is stopped and ``WARMUP_CUT`` returned.
    """
    scratch = Path(tempfile.mkdtemp(prefix="reproduce-warmup-"))
    try:
        argv = [*row_argv(row, scratch / "run", data_dir), "--max-steps", str(steps),
                "--no-test", "--max-epochs", "1"]
        code, wall, stopped = _train(argv, log, deadline)
        results = scratch / "run" / "results.json"
        if stopped and not (code == 0 and results.is_file()):
            return WARMUP_CUT
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
    startup = max(wall - res["train_time_sec"], 0.0)
    return Prediction(0.0, step_s, startup, batches, wall, per_epoch,
                      res.get("val_batches_per_epoch", 0)).after(0)


def done_batches(row: Row, run_dir: Path) -> int:
    """Training batches behind the run's ``last.ckpt`` (0 when it cannot be read)."""
    from d2l_lightning.training.config import ConfigError
    from d2l_lightning.training.runs import read_checkpoint

    try:
        step = read_checkpoint(run_dir / "checkpoints" / "last.ckpt", "--resume")[1]
    except ConfigError:  # train.py says why when it resumes; predict the whole row meanwhile
        return 0
    return step * resolved(row)["trainer"]["accumulate_grad_batches"]


def run_row(row: Row, a: argparse.Namespace, deadline: float | None) -> dict[str, Any]:
    """Run (or skip, or resume) one row by ``deadline`` (``time.perf_counter()``); its record."""
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
    resume = any(run_dir.glob("checkpoints/*.ckpt"))
    if deadline is not None and deadline <= time.perf_counter():
        return {**base, "status": "skipped", "reason": "skipped: --budget-s spent"}
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(stamp.read_text()) if stamp.is_file() else {}
    plan: dict[str, Any] = {}
    if deadline is not None:
        pred = predict(row, a.data_dir, a.warmup_steps, log, deadline)
        if isinstance(pred, str):
            return {**base, "status": "skipped" if pred == WARMUP_CUT else "failed",
                    "reason": pred}
        whole, done = pred, done_batches(row, run_dir) if resume else 0
        pred = pred.after(done)
        left_s = deadline - time.perf_counter()
        rest = f"the {pred.train_batches:,} steps left after step {done:,}" if resume \
            else f"{pred.train_batches:,} steps"
        plan = ({"predicted_rest_s": round(pred.seconds, 1)} if resume else
                {"predicted_s": round(pred.seconds, 1)})
        plan |= {"warmup_s": round(whole.warmup_wall_s, 1), "step_s": whole.step_s}
        print(f"{row.name}: predicted {pred.seconds:,.0f} s ({rest} of {pred.step_s * 1e3:.1f} "
              f"ms + {pred.startup_s:.0f} s); {left_s:,.0f} s left", flush=True)
        if pred.seconds > left_s:
            what = "the resumed run" if resume else "the row"
            return {**base, **plan, "status": "skipped",
                    "reason": f"skipped: predicted {pred.seconds:,.0f} s for {what} > "
                              f"{max(left_s, 0):,.0f} s left of --budget-s"}
    stamp.write_text(json.dumps({**old, "fingerprint": fp, **plan}))
    argv = (["--resume", "last", "--run-dir", str(run_dir)] if resume
            else row_argv(row, run_dir, a.data_dir))
    print(f"{row.name}: {'resuming' if resume else 'running'} python train.py "
          f"{' '.join(argv)} (log: {log})", flush=True)
    code, wall, stopped = _train(argv, log, deadline)
    spent = old.get("spent_s", 0.0) + wall  # earlier parts of a resumed row, stopped by budgets
    if stopped and not (code == 0 and results.is_file()):
        stamp.write_text(json.dumps({**old, "fingerprint": fp, **plan,
                                     "spent_s": round(spent, 1)}))
        kept = ("its last.ckpt is kept and the next run resumes it"
                if (run_dir / "checkpoints" / "last.ckpt").is_file()
                else "it had no checkpoint yet and the next run starts it again")
        return {**base, **plan, "status": "skipped",
                "reason": f"skipped: --budget-s ran out after {wall:,.0f} s of this row, "
                          f"stopped with SIGTERM (exit {code}); {kept}"}
    if code != 0 or not results.is_file():
        return {**base, "status": "failed", "reason": f"exit {code}; see {log}"}
    stamp.write_text(json.dumps({**old, "fingerprint": fp, **plan, "wall_s": round(spent, 1)}))
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


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not the whole usage block
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _seconds(text: str) -> float:
    """A ``--budget-s`` value: a positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(
            f"expected a positive, finite number of seconds, got '{text}'; leave --budget-s "
            "out for no budget")
    return value


def _steps(text: str) -> int:
    """A ``--warmup-steps`` value: a positive whole number."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of steps >= 1, got '{text}'")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code (1: a row failed)."""
    start = time.perf_counter()  # --budget-s counts from here
    p = _Parser(prog="python -m bench.reproduce", description=__doc__.split("\n\n")[0])
    p.add_argument("--device-profile", choices=("cpu", "gpu"), default=None,
                   help="the row set sized for this hardware (default: gpu if CUDA is there)")
    p.add_argument("--only", help="comma-separated row names or globs, e.g. 'lenet*,*/gpt'")
    p.add_argument("--budget-s", type=_seconds, default=None,
                   help="seconds for everything this command runs: rows whose predicted time "
                        "does not fit what is left are skipped (and listed), a row still "
                        "training when it runs out is stopped resumable (SIGTERM)")
    p.add_argument("--smoke", action="store_true", help="every row for 2 steps, in-process")
    p.add_argument("--plan", action="store_true", help="print predicted times only")
    p.add_argument("--warmup-steps", type=_steps, default=20)
    p.add_argument("--runs-dir", default="runs/reproduce")
    p.add_argument("--records-dir", default=str(RECORDS))
    p.add_argument("--data-dir", default=None, help="data root (default: $D2L_DATA_DIR, ./data)")
    p.add_argument("--no-docs", action="store_true", help="keep records; leave docs/ as is")
    p.add_argument("--tables", action="store_true",
                   help="only regenerate the profile's tables of docs/ from the records")
    p.add_argument("--docs-root", default=str(ROOT), help=argparse.SUPPRESS)  # for tests
    a = p.parse_args(argv)
    for flag, why in (("smoke", "runs its rows in this process"), ("tables", "runs nothing")):
        if a.budget_s is not None and getattr(a, flag):
            p.error(f"--budget-s cannot be given with --{flag}, which {why}")
    deadline = None if a.budget_s is None else start + a.budget_s
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
        return _plan(rows, a, deadline)
    if a.tables:
        changed = update_docs(a.device_profile, Path(a.records_dir), Path(a.docs_root))
        print("updated: " + (", ".join(map(str, changed)) or "nothing"))
        return 0
    records = Path(a.records_dir)
    print(f"{a.device_profile} profile: {len(rows)} rows; runs in {a.runs_dir}; "
          f"{hardware()}", flush=True)
    outcome = {}
    for row in rows:
        rec = run_row(row, a, deadline)
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


def _plan(rows: list[Row], a: argparse.Namespace, deadline: float | None) -> int:
    log = Path(a.runs_dir) / a.device_profile / "plan.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    total = 0.0
    print(f"{'row':48} {'predicted s':>12} {'cumulative':>11}  (timed warm-up of "
          f"{a.warmup_steps} steps on this machine)", flush=True)
    for row in rows:
        spent = deadline is not None and deadline <= time.perf_counter()
        pred = "skipped: --budget-s spent" if spent else predict(
            row, a.data_dir, a.warmup_steps, log, deadline)
        if isinstance(pred, str):
            print(f"{row.name:48} {pred}", flush=True)
            continue
        total += pred.seconds
        print(f"{row.name:48} {pred.seconds:12,.0f} {total:11,.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Train any registered model with one Lightning Trainer, or evaluate a run again.

Examples:
    python train.py                                  # LeNet, Fashion-MNIST, d2l recipe
    python train.py --model lenet_bn --recipe modern # the improved recipe
    python train.py --model mlp --data mnist --max-epochs 3 --logger tensorboard wandb
    python train.py --config fashion_mnist/lenet_bn-modern --print-config   # a shipped config
    python train.py --config runs/RUN/config.yaml --run-dir runs/replay   # replay a run
    python train.py --resume last --run-dir runs/RUN                       # continue a run
    python train.py test --run-dir runs/RUN          # its test numbers again, from last.ckpt
    python train.py --sweep sweeps/lenet-lr-grid     # a grid search
    python train.py --callback EarlyStopping patience=2 --trainer.val_check_interval=0.5
    python train.py --list [MODEL]                   # every model and recipe

The config has six sections (model, data, task, optim, trainer, run; see
:mod:`d2l_lightning.training.config`). Each run folder holds config.yaml, metrics.csv,
checkpoints/ (last.ckpt and the best by the validation metric), results.json and export/
(plain-PyTorch weights; see predict.py). This module handles the arguments and maps errors to
exit codes; the work is :func:`d2l_lightning.training.fit`, ``validate`` and ``test``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from d2l_lightning.datamodules.download import DataError
from d2l_lightning.training.errors import ConfigError

EVALUATIONS = ("validate", "test")


def _run_command(argv: list[str]) -> dict[str, Any] | int | None:
    """The default command: train (or list, sweep, print the config); results or exit code."""
    from d2l_lightning.training.cluster import check_run_dir_given
    from d2l_lightning.training.command_line import parse_command_line
    from d2l_lightning.training.config import dump_config, load_config_file, resolve
    from d2l_lightning.training.runs import plan_resume

    request = parse_command_line(argv)
    if request.list_configs:
        from d2l_lightning.training.listing import list_configs

        print(list_configs())
        return 0
    if request.list_models is not None:
        from d2l_lightning.training.listing import describe_model, list_models

        print(describe_model(request.list_models) if request.list_models else list_models())
        return 0
    if request.sweep:
        from d2l_lightning.training.sweep import run_sweep

        return run_sweep(request)
    plan = None
    if request.resume:  # every process must find the same run (not the newest of its own)
        check_run_dir_given(request.resume != "last"
                            or bool(request.cli.values.get("run", {}).get("run_dir")))
        plan = plan_resume(request.resume, request.cli, request.configs)
        cfg = resolve([*plan.layers, plan.changes])
        plan.check(cfg)
        cfg["run"]["run_dir"] = str(plan.run_dir)
    else:
        cfg = resolve([*map(load_config_file, request.configs), request.cli])
    if request.print_config:
        print(dump_config(cfg), end="")
        return 0
    check_run_dir_given(bool(cfg["run"]["run_dir"]), cfg["trainer"]["num_nodes"])
    if plan is not None:
        print(f"resuming {plan.run_dir} ({cfg['model']['name']} on {cfg['data']['name']}) "
              f"from {plan.ckpt.name} at step {plan.step}", flush=True)
    from d2l_lightning.training.run import fit

    return fit(cfg, resume=plan)


def _evaluation_parser(stage: str) -> argparse.ArgumentParser:
    from d2l_lightning.training.flags import _Parser

    p = _Parser(prog=f"train.py {stage}", description=f"{stage.capitalize()} a run again from "
                "a checkpoint, with the run's own config (data split, batches, seed); with "
                "its last checkpoint the numbers are those of its results.json. Nothing in the "
                "run folder changes.")
    p.add_argument("--run-dir", help="the run folder")
    p.add_argument("--ckpt", help="a checkpoint (default: RUN_DIR/checkpoints/last.ckpt; its "
                   "run is the folder above checkpoints/)")
    p.add_argument("--data-dir", help="data root, if it moved (default: the run's)")
    p.add_argument("--accelerator", help="auto, cpu, gpu... (default: the run's)")
    p.add_argument("--devices", help="devices (default: the run's)")
    p.add_argument("--precision", help="numeric precision (default: the run's)")
    p.add_argument("--limit-val-batches", type=float, help="a fraction or count of batches")
    p.add_argument("--limit-test-batches", type=float, help="a fraction or count of batches")
    p.add_argument("--progress-bar", action=argparse.BooleanOptionalAction,
                   help="the bar, else plain lines (default: when stderr is a terminal)")
    p.add_argument("--json", metavar="FILE", help="also write the metrics to FILE")
    return p


def _evaluate(stage: str, argv: list[str]) -> int:
    """``train.py validate|test``: print the metrics beside the run's ``results.json``."""
    from d2l_lightning.cli.report import print_beside_results
    from d2l_lightning.training.evaluate import evaluate

    args = _evaluation_parser(stage).parse_args(argv)
    overrides: dict[str, dict[str, Any]] = {}
    for section, key, value in (
            ("data", "data_dir", args.data_dir), ("trainer", "accelerator", args.accelerator),
            ("trainer", "devices", args.devices and _count(args.devices)),
            ("trainer", "precision", args.precision),
            ("trainer", "limit_val_batches", _count(args.limit_val_batches)),
            ("trainer", "limit_test_batches", _count(args.limit_test_batches)),
            ("run", "progress_bar", args.progress_bar)):
        if value is not None:
            overrides.setdefault(section, {})[key] = value
    metrics = evaluate(stage, args.run_dir, args.ckpt, overrides)
    run_dir = Path(args.run_dir) if args.run_dir else Path(args.ckpt).parent.parent
    print_beside_results(metrics, run_dir / "results.json", f"{stage} of {run_dir}"
                         + (f" ({args.ckpt})" if args.ckpt else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(metrics, indent=2) + "\n")
    return 0


def _count(value: Any) -> Any:
    """``2.0`` -> ``2`` (a count), ``0.5`` stays (a fraction); ``"2"`` -> ``2``."""
    if isinstance(value, float) and value.is_integer() and value > 1:
        return int(value)
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return value


class _Warnings(logging.Handler):
    """The library's warnings (e.g. a recipe made for other data) as ``warning: ...`` lines."""

    def emit(self, record: logging.LogRecord) -> None:
        """Write the line to the current stderr (looked up now: tests swap it)."""
        print(f"warning: {record.getMessage()}", file=sys.stderr, flush=True)


def _show_warnings() -> None:
    log = logging.getLogger("d2l_lightning")
    if not any(isinstance(h, _Warnings) for h in log.handlers):
        log.addHandler(_Warnings(logging.WARNING))
        log.propagate = False


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code.

    SIGTERM outside a trainer's loops ends the command with one sentence (exit 143); inside
    them, Lightning's handler and ours keep a checkpoint.
    """
    import threading

    from d2l_lightning.training.faults import SIGTERM_OUTSIDE_TRAINING

    if threading.current_thread() is not threading.main_thread():
        return _main(argv)
    previous = signal.signal(signal.SIGTERM, SIGTERM_OUTSIDE_TRAINING)
    try:
        return _main(argv)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main(argv: list[str] | None) -> int:
    from d2l_lightning.training.cluster import RUN_DIR_ENV
    from d2l_lightning.training.console import quiet_warnings
    from d2l_lightning.training.faults import WRITE_ERRNOS, TerminatedError

    quiet_warnings()
    _show_warnings()
    argv = list(sys.argv[1:] if argv is None else argv)
    stage = argv[0] if argv and argv[0] in (*EVALUATIONS, "fit") else "fit"
    if argv and argv[0] == stage:
        argv = argv[1:]
    run_dir = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--run-dir"), "RUN")
    ddp_child = RUN_DIR_ENV in os.environ  # a process Lightning started (its parent chose)
    try:
        if stage in EVALUATIONS:
            return _evaluate(stage, argv)
        results = _run_command(argv)
    except SystemExit as e:  # argparse: --help, or its one-line refusal (already printed)
        return e.code if isinstance(e.code, int) else 2
    except ConfigError as e:  # one sentence, as argparse's own refusals
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
    except (DataError, FileNotFoundError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except TerminatedError as e:
        if not ddp_child:  # the processes Lightning started share stderr: one line, rank 0's
            print(f"error: {e}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt as e:  # Ctrl-C outside Lightning's loops, e.g. in a download
        print(f"error: {e or 'interrupted (Ctrl-C)'}", file=sys.stderr)
        return 128 + signal.SIGINT
    except OSError as e:
        if e.errno not in WRITE_ERRNOS:
            raise
        print(f"error: cannot write {e.filename or 'the run folder'}: {e.strerror}; "
              "free some space or choose a writable --run-dir", file=sys.stderr)
        return 1
    except Exception as e:  # imported here: --help imports neither torch nor Lightning
        from d2l_lightning.callbacks import NonFiniteLossError
        from d2l_lightning.models import ExportError
        from d2l_lightning.training.cluster import peer_failure

        if isinstance(e, ExportError):
            print(f"error: {e}", file=sys.stderr)
            return 1
        if isinstance(e, NonFiniteLossError):
            print(f"error: stopped: {e}", file=sys.stderr)
            return 1
        said = peer_failure(e)
        if said is None:
            raise
        print(f"error: another process of this distributed run died or stopped answering "
              f"({said}); continue from the last checkpoint with --resume last --run-dir "
              f"{run_dir}", file=sys.stderr)
        return 1
    if isinstance(results, int):
        return results
    if results is not None:
        shown = {k: round(v, 4) for k, v in results.items()
                 if k.startswith(("val/", "test/")) and isinstance(v, float)}
        print(f"\n{results['model']} on {results['data']}: {shown}")
        if results.get("test_split") == "validation" and any(k.startswith("test/") for k in shown):
            print("test/* is on the validation split: this data has no separate test split")
        print(f"train: {results['train_samples_per_sec']:.0f} samples/s, "
              f"{results['epochs']} epochs, {results['train_time_sec']:.1f} s")
        print(f"run folder: {results['run_dir']}")
        print(f"export:     {results['export_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

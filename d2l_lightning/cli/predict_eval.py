"""``predict.py eval``: an export's validation or test metrics again, in plain PyTorch.

The export's ``config.json`` carries its run's resolved config (``run_config``); from it the
run's split is rebuilt (the ``data`` section and ``run.seed``, see
:func:`datamodules.splits.eval_data`), batched and limited as the run's Trainer did, and
evaluated with the task's settings (:func:`d2l_lightning.evaluation.evaluate_export`). Each
metric is printed beside the run's ``results.json`` value when the export sits in a run folder
(``RUN/export``): for the export a run writes at its end they are equal to the last digit.
Neither Lightning nor torchmetrics is imported; nothing is written but ``--json FILE``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from d2l_lightning.datamodules.download import DataError

#: the ``run_config`` sections an evaluation reads
SECTIONS = ("data", "task", "trainer", "run")


def add_eval_parser(sub: Any) -> None:
    """The ``eval`` sub-command's arguments (no torch import: ``--help`` stays light)."""
    from d2l_lightning.cli.predict import COUNT

    e = sub.add_parser("eval", help="an export's val/test metrics again, beside results.json",
                       description="Evaluate an export of any task family on its run's own "
                       "validation or test split (same split, batches, limits and settings, "
                       "from config.json's run_config) and print each metric beside the run's "
                       "results.json value.")
    e.add_argument("--export", required=True, help="export folder (RUN_DIR/export)")
    e.add_argument("--split", default="test", choices=("test", "val"), help="split to evaluate")
    e.add_argument("--data-dir", help="data root, if it moved (default: the run's, else "
                   "$D2L_DATA_DIR, else ./data)")
    e.add_argument("--batch-size", type=COUNT,
                   help="evaluation batch size (language models: streams; default: the run's)")
    e.add_argument("--device", default="cpu", help="torch device, e.g. cuda:0")
    e.add_argument("--json", metavar="FILE", help="also write the metrics to FILE")
    e.set_defaults(func=cmd_eval)


def run_config_of(config: dict[str, Any], export: Path) -> dict[str, Any]:
    """The export's ``run_config``; an export of an earlier version is refused in one sentence.

    Raises:
        ExportError: no run config, or one without the sections an evaluation reads.
    """
    from d2l_lightning.models import ExportError

    run = config.get("run_config")
    if not isinstance(run, dict):
        raise ExportError(
            f"{export} holds no run config (it was exported by an earlier version), so its "
            "data split cannot be rebuilt: evaluate the run with `train.py test --run-dir RUN` "
            "or re-export it with `python export.py RUN/checkpoints/last.ckpt`")
    missing = [s for s in SECTIONS if not isinstance(run.get(s), dict)]
    if missing:
        raise ExportError(f"{export / 'config.json'}: its run_config lacks the "
                          f"{', '.join(missing)} section(s); re-export it with export.py")
    return run


def check_data(info: dict[str, Any], config: dict[str, Any], root: str) -> None:
    """Refuse data whose vocabularies or classes are not those the model was trained with."""
    pairs = [(k, k) for k in ("vocab", "src_vocab", "tgt_vocab")] + [("class_names",
                                                                       "class_names")]
    for ours, theirs in pairs:
        if ours in info and theirs in config:
            found = info[ours]
            found = found.to_json() if hasattr(found, "to_json") else list(found)
            if found != list(config[theirs]):
                what = "classes" if ours == "class_names" else "vocabulary"
                raise DataError(f"the data under {root} is not the data this model was trained "
                                f"on (its {what} differs); point --data-dir at the run's data")


def differences(run: dict[str, Any]) -> list[str]:
    """What of the run this one-process, eager evaluation does not reproduce digit for digit."""
    trainer, notes = run["trainer"], []
    devices = trainer.get("devices")
    count = len(devices) if isinstance(devices, list) else devices
    world = (count if isinstance(count, int) else 1) * (trainer.get("num_nodes") or 1)
    if world > 1:
        notes.append(f"the run evaluated on {world} processes, each its own share of the "
                     "batches; one process may differ in the last digits (language models: "
                     "also in how the text is cut into streams)")
    if run["run"].get("compile"):
        notes.append("the run compiled its model; the eager model may differ in the last "
                     "digits")
    return notes


def _device(name: str) -> str | None:
    """Why ``name`` is not a device this process can use, or ``None``."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError as e:
        return str(e).splitlines()[0]
    if device.type == "cuda" and not torch.cuda.is_available():
        return f"{name} is not available (torch sees no CUDA device)"
    return None


def cmd_eval(args: argparse.Namespace) -> int:
    """``eval``: the export's metrics on its run's split, beside ``results.json``."""
    import itertools

    from d2l_lightning.cli.predict import require
    from d2l_lightning.cli.report import print_beside_results
    from d2l_lightning.datamodules.splits import eval_data
    from d2l_lightning.evaluation import (
        batch_limit,
        evaluate_export,
        num_batches,
        torch_flags,
        with_saved_dtype,
    )
    from d2l_lightning.models import ExportError, load_exported
    from d2l_lightning.models.export import check_export

    why = _device(args.device)
    if why:
        print(f"predict.py eval: error: --device {args.device}: {why}", file=sys.stderr)
        return 2
    export = Path(args.export)
    config, _ = check_export(export)  # every field, before the data is read
    task = config.get("task")
    if task == "text_encoding":
        raise ExportError(f"{export} holds a BERT encoder, which was not evaluated on its own; "
                          "evaluate the whole model's export (the folder above)")
    run = run_config_of(config, export)
    require(config, args.export)
    data = dict(run["data"])
    if args.data_dir:
        data["data_dir"] = args.data_dir
    root = str(data.get("data_dir") or data.get("root") or "the data root")
    split_data = eval_data(data, task, args.split, run["run"].get("seed", 0), args.batch_size)
    check_data(split_data.info, config, root)
    for note in [split_data.note, *differences(run)]:
        if note:
            print(f"note: {note}", file=sys.stderr)
    try:
        n = num_batches(len(split_data.loader), batch_limit(run["trainer"], args.split))
    except ValueError as e:
        raise DataError(f"limit_{args.split}_batches: {e}") from None
    if n == 0:
        raise DataError(f"the run evaluated no {args.split} batch (its {args.split} split is "
                        f"empty or limit_{args.split}_batches is 0), so there is nothing to "
                        "compare")
    torch_flags(run)
    model, config = load_exported(export, map_location=args.device)
    model = with_saved_dtype(model, export)
    try:
        metrics = evaluate_export(model, config, itertools.islice(split_data.loader, n),
                                  args.split, args.device, split_data.info)
    except ValueError as e:  # a task family or precision this evaluation does not reproduce
        raise ExportError(f"{export}: {e}") from None
    results = export.parent / "results.json"
    print_beside_results(metrics, results, f"eval of {export} on {data.get('name')} "
                         f"{args.split}, {n} batches"
                         + (f" (beside {results})" if results.is_file() else ""))
    if args.json:
        try:
            Path(args.json).write_text(json.dumps(metrics, indent=2) + "\n")
        except OSError as e:
            raise DataError(f"cannot write {args.json}: {e.strerror}") from None
    return 0

"""Learning-curve plots from ``metrics.csv``: one run's ``curves.png``, or several runs overlaid.

    d2l-plot RUN [RUN ...] [--metric val/acc] [--out F.png]
    python -m d2l_lightning.training.plot RUN [RUN ...]     (the same, from a checkout)

A RUN may be a sweep folder: its trials (sub-folders holding ``metrics.csv``) are overlaid.
Lightning-free; matplotlib is imported only when a figure is drawn.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: the metric overlaid when --metric is not given: the first one every run logged
DEFAULT_METRICS = ("val/acc", "val/ppl", "val/bleu", "val/loss")
Series = list[tuple[float, float]]


class PlotError(Exception):
    """A folder that is not a run, a run without metrics, a metric that was not logged."""


class MetricsFileError(PlotError):
    """A ``metrics.csv`` that cannot be read: a fault in a file, not in the command line."""


def read_curves(run_dir: str | Path) -> dict[str, Series]:
    """Every metric of ``RUN/metrics.csv`` as ``(epoch, value)`` points.

    Epoch rows (``val/*``, ``train/loss_epoch``...) sit at the end of their epoch (epoch 1 is
    the first); step rows (``train/loss``, ``lr-*``) at their fraction of the epochs.

    Raises:
        PlotError: no ``metrics.csv``.
        MetricsFileError: a ``metrics.csv`` that is empty, not text, without a ``step`` column
            or a metric row, or with a value that is not a number (the sentence names the line).
    """
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        what = "has no metrics yet" if (Path(run_dir) / "config.yaml").is_file() else (
            "is not a run folder of train.py")
        raise PlotError(f"{run_dir} {what} (no metrics.csv)")
    rows = _read_rows(path)
    epoch_end: dict[int, int] = {}
    for line, row in rows:
        if row.get("epoch") not in (None, ""):
            e = _whole(path, line, row, "epoch")
            epoch_end[e] = max(epoch_end.get(e, -1), _whole(path, line, row, "step"))
    per_epoch = (max(epoch_end.values()) + 1) / (max(epoch_end) + 1) if epoch_end else None
    curves: dict[str, Series] = {}
    for line, row in rows:
        step = _whole(path, line, row, "step")
        if row.get("epoch") not in (None, ""):
            x = _whole(path, line, row, "epoch") + 1.0
        elif per_epoch:
            x = (step + 1) / per_epoch
        else:
            x = float(step)  # no epoch finished yet
        for key, value in row.items():
            if key not in ("step", "epoch") and value not in (None, ""):
                try:
                    curves.setdefault(key, []).append((x, float(value)))
                except ValueError:
                    raise MetricsFileError(f"{path}, line {line}: {key} is {value!r}, not a "
                                           "number; fix or delete that line") from None
    if not curves:
        raise MetricsFileError(f"{path} holds no metric value yet (no row has one)")
    return curves


def _read_rows(path: Path) -> list[tuple[int, dict[str, str]]]:
    """The rows of a ``metrics.csv`` with their line numbers, checked for their form."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = [(reader.line_num, row) for row in reader]
            header = reader.fieldnames
    except UnicodeDecodeError:
        raise MetricsFileError(f"{path} is not a text file (not UTF-8); delete it or point at "
                               "another run") from None
    except csv.Error as e:
        raise MetricsFileError(f"{path} is not a CSV file ({e}); delete it or point at another "
                               "run") from None
    if not header:
        raise MetricsFileError(f"{path} is empty (not even a header line)")
    if "step" not in header:
        raise MetricsFileError(f"{path} has no 'step' column in its header line, so it is not "
                               "a metrics.csv of train.py")
    if not rows:
        raise MetricsFileError(f"{path} holds a header line but no metric row yet")
    for line, row in rows:
        if None in row:  # DictReader puts the values beyond the header under None
            raise MetricsFileError(f"{path}, line {line}: more values than the header line "
                                   "has columns; fix or delete that line")
    return rows


def _whole(path: Path, line: int, row: dict[str, str], key: str) -> int:
    """``row[key]`` as a step or epoch count (``3`` or ``3.0``), or one sentence naming it."""
    value = row.get(key)
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or number < 0 or number != int(number):
        raise MetricsFileError(f"{path}, line {line}: {key} is {value!r}, not a whole number; "
                               "fix or delete that line")
    return int(number)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _draw(ax, points: Series, label: str, **kw: Any) -> None:
    xs, ys = zip(*points)
    ax.plot(xs, ys, label=label, marker="o" if len(points) < 30 else None, markersize=3, **kw)


def plot_run(run_dir: str | Path, out: str | Path | None = None,
             monitor: str | None = None) -> dict[str, list[str]]:
    """Write ``curves.png``: loss and the monitored metric (train and val), and the LR if logged.

    Args:
        run_dir: the run folder.
        out: the PNG (default: ``RUN/curves.png``).
        monitor: the metric of the second panel (e.g. ``val/acc``); a loss adds no panel.

    Returns:
        Each panel's title with the labels of its curves, as drawn.
    """
    curves = read_curves(run_dir)
    panels: list[tuple[str, list[tuple[str, Series]]]] = []
    loss = [("train", curves.get("train/loss_epoch") or curves.get("train/loss")),
            ("val", curves.get("val/loss"))]
    panels.append(("loss", [(k, v) for k, v in loss if v]))
    if monitor and monitor != "val/loss" and monitor in curves:
        name = monitor.split("/", 1)[-1]
        metric = [("train", curves.get(f"train/{name}")), ("val", curves[monitor])]
        panels.append((name, [(k, v) for k, v in metric if v]))
    lrs = [(k[3:], v) for k, v in sorted(curves.items()) if k.startswith("lr-")]
    if lrs:
        panels.append(("learning rate", lrs))
    panels = [(t, c) for t, c in panels if c]
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    drawn = {}
    for ax, (title, series) in zip(axes[0], panels):
        for label, points in series:
            _draw(ax, points, label)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        drawn[title] = [line.get_label() for line in ax.get_lines()]
    fig.suptitle(Path(run_dir).name, fontsize=9)
    fig.tight_layout()
    out = Path(out) if out else Path(run_dir) / "curves.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return drawn


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], names: Sequence[str],
                          out: str | Path) -> Path:
    """Write a confusion matrix (rows: true class, columns: predicted) with its counts."""
    plt = _pyplot()
    n = len(matrix)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * n, 0.8 + 0.5 * n))
    ax.imshow(matrix, cmap="Blues")
    top = max((max(row) for row in matrix), default=0)
    if n <= 30:
        for i, row in enumerate(matrix):
            for j, v in enumerate(row):
                ax.text(j, i, str(int(v)), ha="center", va="center", fontsize=7,
                        color="white" if v > top / 2 else "black")
    ax.set_xticks(range(n), [str(x) for x in names], rotation=90, fontsize=8)
    ax.set_yticks(range(n), [str(x) for x in names], fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return Path(out)


def plot_predictions(pixels: Any, labels: Sequence[str], predicted: Sequence[str],
                     confidence: Sequence[float], out: str | Path) -> Path:
    """A grid of test images titled ``predicted (confidence)``, in red when wrong.

    Args:
        pixels: ``(N, C, H, W)`` floats in [0, 1] (C: 1 or 3).
        labels: the true class names.
        predicted: the predicted class names.
        confidence: the predicted class's probability.
        out: the PNG.
    """
    plt = _pyplot()
    n = len(labels)
    cols = min(n, 8)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.4 * cols, 1.9 * rows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= n:
            continue
        img = pixels[k]
        ax.imshow(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0),
                  cmap="gray" if img.shape[0] == 1 else None, vmin=0, vmax=1)
        wrong = predicted[k] != labels[k]
        ax.set_title(f"{predicted[k]} ({confidence[k]:.2f})", fontsize=7,
                     color="red" if wrong else "black")
    fig.suptitle("test predictions (red: wrong)", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return Path(out)


def find_runs(paths: Sequence[str | Path]) -> list[Path]:
    """The run folders named, a sweep folder standing for its trials.

    Raises:
        PlotError: a path that is neither a run nor a folder of runs.
    """
    runs = []
    for p in map(Path, paths):
        if (p / "metrics.csv").is_file() or (p / "config.yaml").is_file():
            runs.append(p)
            continue
        trials = sorted(q.parent for q in p.glob("*/metrics.csv")) if p.is_dir() else []
        if not trials:
            raise PlotError(f"{p} is not a run folder of train.py (no metrics.csv or "
                            "config.yaml) nor a folder of runs")
        runs += trials
    return runs


def plot_runs(runs: Sequence[str | Path], metric: str | None, out: str | Path) -> list[str]:
    """Overlay ``metric`` of several runs against the epoch; returns the curves' labels.

    Raises:
        PlotError: a run without metrics, or without ``metric``.
    """
    curves = {Path(r): read_curves(r) for r in runs}
    if metric is None:
        metric = next((m for m in DEFAULT_METRICS if all(m in c for c in curves.values())), None)
        if metric is None:
            raise PlotError("no metric was logged by every run; choose one with --metric")
    for run, c in curves.items():
        if metric not in c:
            logged = ", ".join(sorted(k for k in c if not k.startswith("lr-")))
            raise PlotError(f"{run} did not log {metric} (it logged: {logged})")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    names = [r.name if r.name else str(r) for r in curves]
    if len(set(names)) < len(names):
        names = [str(r) for r in curves]
    for name, c in zip(names, curves.values()):
        _draw(ax, c[metric], name)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    labels = [line.get_label() for line in ax.get_lines()]
    plt.close(fig)
    return labels


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit code (2: refused, 1: an unreadable ``metrics.csv``)."""
    p = argparse.ArgumentParser(prog="d2l-plot",
                                description="Overlay the learning curves of one or more runs.")
    p.add_argument("runs", nargs="+", metavar="RUN",
                   help="run folder, or a folder of runs such as a sweep's")
    p.add_argument("--metric", help="metric to overlay (default: the first of "
                   f"{', '.join(DEFAULT_METRICS)} that every run logged)")
    p.add_argument("--out", default="curves.png",
                   help="the PNG to write (default: curves.png in the current folder)")
    args = p.parse_args(argv)
    try:
        labels = plot_runs(find_runs(args.runs), args.metric, args.out)
    except PlotError as e:  # 1: a file that cannot be read; 2: a refused command line
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 1 if isinstance(e, MetricsFileError) else 2
    print(f"{args.out}: {len(labels)} run(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

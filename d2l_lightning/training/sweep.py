"""``train.py --sweep SWEEP.yaml``: a grid or seeded random search, one run folder per trial.

The sweep file uses the W&B sweep format, so one file serves both a local sweep and
``wandb sweep``: ``method`` (``grid`` or ``random``), ``parameters`` (config keys written
``SECTION.KEY``, each with ``values``, ``value``, or a ``distribution`` with ``min``/``max``),
``metric`` (``name`` and ``goal``; default: the model's monitored metric) and ``run_cap``
(random search: the number of trials; at most 10,000 locally). ``program``, ``command``,
``name``, ``description``, ``project`` and ``entity`` only matter to W&B. The rest of the
config comes from the command line (``--config``, flags), as for one run.

Every trial is resolved and checked before anything is written. Trial ``i`` runs as its own
``train.py`` process in ``SWEEP_DIR/trial-i`` (so DDP and loggers work as for any run), one
after another. A re-launch of the same command skips finished trials, resumes a killed one
from its ``last.ckpt``, and writes ``SWEEP_DIR/summary.csv`` (one row per trial, sorted by the
metric), which it also prints.
"""

from __future__ import annotations

import csv
import itertools
import math
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from .command_line import Request
from .config import (
    SECTIONS,
    Config,
    ConfigError,
    Layer,
    config_path,
    dump_config,
    load_config_file,
    log,
    read_yaml,
    resolve,
)
from .faults import signal_name
from .lock import FolderLock, check_free
from .runs import RUN_DIR_ENV, remove_partial_files, same_config

#: a trial's process: ``train.py`` of this package, found where this process found it
TRAIN = ("-m", "d2l_lightning.cli.train")
PACKAGE_ROOT = Path(__file__).resolve().parents[2]
METHODS = ("grid", "random")
DISTRIBUTIONS = ("constant", "categorical", "uniform", "int_uniform", "log_uniform_values")
W_AND_B_ONLY = ("program", "command", "name", "description", "project", "entity")
#: most trials of a local sweep (they run one after another, each resolved beforehand)
MAX_TRIALS = 10_000


def load_sweep(path: str | Path) -> dict[str, Any]:
    """Read and check a sweep file; any problem is one :class:`ConfigError` sentence."""
    path = config_path(path, "sweep file")
    spec = read_yaml(path, "sweep file")
    if not isinstance(spec, dict):
        raise ConfigError(f"sweep file {path} must hold a mapping (method, parameters, ...)")
    known = ("method", "parameters", "metric", "run_cap", *W_AND_B_ONLY)
    for key in spec:
        if key not in known:
            raise ConfigError(f"sweep {path}: unknown key '{key}' (keys: {', '.join(known)}; "
                              "early_terminate is not supported)")
    if spec.get("method") not in METHODS:
        raise ConfigError(f"sweep {path}: method must be one of {', '.join(METHODS)}, "
                          f"not {spec.get('method')!r}")
    cap = spec.get("run_cap")
    if cap is not None and (type(cap) is not int or cap < 1):
        raise ConfigError(f"sweep {path} has no trials: run_cap must be a whole number of at "
                          f"least 1, not {cap!r}")
    if cap is not None and cap > MAX_TRIALS:
        raise ConfigError(f"sweep {path}: run_cap must be at most {MAX_TRIALS} (a local sweep "
                          f"runs its trials one after another), not {cap}")
    params = spec.get("parameters")
    if not isinstance(params, dict) or not params:
        raise ConfigError(f"sweep {path} has no trials: 'parameters' is empty")
    for key, p in params.items():
        section, _, name = str(key).partition(".")
        if section not in SECTIONS or not name:
            raise ConfigError(f"sweep {path}: parameter '{key}' must be written SECTION.KEY "
                              f"(sections: {', '.join(SECTIONS)})")
        if key == "run.run_dir":
            raise ConfigError(f"sweep {path}: run.run_dir cannot be swept: each trial runs in "
                              "SWEEP_DIR/trial-N (--run-dir names SWEEP_DIR)")
        if not isinstance(p, dict):
            raise ConfigError(f"sweep {path}: parameter '{key}' needs values, value or a "
                              "distribution")
        dist = _distribution(path, key, p)
        if spec["method"] == "random" and "values" in p and dist != "categorical":
            raise ConfigError(f"sweep {path}: '{key}' has values, which are drawn as "
                              f"categorical, not {dist} (that needs min and max instead)")
    grid = math.prod(1 if "value" in p or "values" not in p else len(p["values"])
                     for p in params.values())
    if spec["method"] == "grid" and cap is None and grid > MAX_TRIALS:
        raise ConfigError(f"sweep {path}: the grid has {grid} trials, more than the {MAX_TRIALS} "
                          "a local sweep runs; give fewer values or a run_cap of at most "
                          f"{MAX_TRIALS}")
    metric = spec.get("metric")
    if metric is not None and not (isinstance(metric, dict) and "name" in metric
                                   and metric.get("goal", "minimize") in ("minimize",
                                                                          "maximize")):
        raise ConfigError(f"sweep {path}: metric must be a mapping with 'name' and a 'goal' of "
                          "minimize or maximize")
    spec["path"] = path
    return spec


def _distribution(path: Path, key: str, p: dict[str, Any]) -> str:
    """The (inferred) distribution of one parameter, checked."""
    if "value" in p:
        return "constant"
    if "values" in p:
        if not isinstance(p["values"], list) or not p["values"]:
            raise ConfigError(f"sweep {path} has no trials: '{key}' has no values")
        _check_probabilities(path, key, p["values"], p.get("probabilities"))
        return p.get("distribution", "categorical")
    if "min" not in p or "max" not in p:
        raise ConfigError(f"sweep {path}: parameter '{key}' needs values, value, or min and max")
    ints = isinstance(p["min"], int) and isinstance(p["max"], int)
    dist = p.get("distribution", "int_uniform" if ints else "uniform")
    if dist not in DISTRIBUTIONS:
        raise ConfigError(f"sweep {path}: distribution '{dist}' of '{key}' is not supported "
                          f"locally (supported: {', '.join(DISTRIBUTIONS)})")
    if dist in ("constant", "categorical"):  # drawn from value / values, which it lacks
        raise ConfigError(f"sweep {path}: '{key}' is {dist}, which takes "
                          f"{'a value' if dist == 'constant' else 'values'}, not min and max")
    if not all(_finite(p[k]) for k in ("min", "max")) or dist == "int_uniform" and not ints:
        kind = "whole numbers" if dist == "int_uniform" else "finite numbers"
        raise ConfigError(f"sweep {path}: '{key}' needs a min and a max that are {kind} for "
                          f"{dist}, not {p['min']!r} and {p['max']!r}")
    if not p["min"] < p["max"] or (dist == "log_uniform_values" and p["min"] <= 0):
        raise ConfigError(f"sweep {path}: '{key}' needs 0 < min < max for {dist}"
                          if dist == "log_uniform_values" else
                          f"sweep {path}: '{key}' needs min < max")
    return dist


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


def _check_probabilities(path: Path, key: str, values: list[Any], probs: Any) -> None:
    """``probabilities`` of a categorical parameter: one per value, at least 0, sum 1."""
    if probs is None:
        return
    if not (isinstance(probs, list) and len(probs) == len(values) and all(map(_finite, probs))
            and min(probs) >= 0 and math.isclose(math.fsum(probs), 1, abs_tol=1e-6)):
        raise ConfigError(f"sweep {path}: the probabilities of '{key}' must be "
                          f"{len(values)} numbers (one per value) of at least 0 that sum to 1, "
                          f"not {probs!r}")


def trials(spec: dict[str, Any], seed: int) -> list[dict[str, Any]]:
    """The trials' parameter values, in order: the grid's product, or ``run_cap`` draws."""
    path, params = spec["path"], spec["parameters"]
    if spec["method"] == "grid":
        choices = []
        for key, p in params.items():
            if _distribution(path, key, p) not in ("constant", "categorical"):
                raise ConfigError(f"sweep {path}: a grid needs values for '{key}', not a "
                                  "distribution")
            choices.append([p["value"]] if "value" in p else p["values"])
        combos = itertools.islice(itertools.product(*choices), spec.get("run_cap"))
        return [dict(zip(params, combo)) for combo in combos]  # run_cap: None or 1..MAX
    cap = spec.get("run_cap")
    if cap is None:
        raise ConfigError(f"sweep {path} has no trials: a random search needs run_cap (the "
                          "number of trials)")
    rng = random.Random(seed)
    return [{key: _draw(rng, path, key, p) for key, p in params.items()} for _ in range(cap)]


def _draw(rng: random.Random, path: Path, key: str, p: dict[str, Any]) -> Any:
    dist = _distribution(path, key, p)
    if dist == "constant":
        return p["value"]
    if dist == "categorical":
        return rng.choices(p["values"], weights=p.get("probabilities"))[0]
    if dist == "int_uniform":
        return rng.randint(p["min"], p["max"])
    if dist == "log_uniform_values":
        return math.exp(rng.uniform(math.log(p["min"]), math.log(p["max"])))
    return rng.uniform(p["min"], p["max"])


def plan(request: Request) -> tuple[dict[str, Any], Path, list[dict[str, Any]], list[Config]]:
    """The sweep, its folder, each trial's values and each trial's resolved config."""
    spec = load_sweep(request.sweep)
    base = [*map(load_config_file, request.configs), request.cli]
    swept = set(spec["parameters"])
    for section, key, _ in request.cli.items():
        if f"{section}.{key}" in swept:
            raise ConfigError(f"{request.cli.sources[section, key]} sets '{section}.{key}', "
                              f"which the sweep {spec['path']} varies")
    folder = request.cli.values.get("run", {}).get("run_dir")
    sweep_dir = Path(folder) if folder else Path("runs") / f"sweep-{spec['path'].stem}"
    configs, notes = [], []
    seed = resolve(base, notes)["run"]["seed"]
    values = trials(spec, seed)  # at least one: load_sweep checked the values and run_cap
    for i, trial in enumerate(values):
        layer = Layer(f"sweep {spec['path']}")
        for dotted, value in trial.items():
            section, _, key = dotted.partition(".")
            layer.set(section, key, value, f"sweep {spec['path']} ({dotted})")
        layer.set("run", "run_dir", str(sweep_dir / f"trial-{i:03d}"),
                  f"sweep {spec['path']} (trial {i}'s folder)")
        configs.append(resolve([*base, layer], notes))
    for said in dict.fromkeys(notes):  # once, not once per trial
        log.warning(said)
    return spec, sweep_dir, values, configs


def run_sweep(request: Request) -> int:
    """Run (or continue) the sweep; 0 when every trial finished, else 1."""
    if request.resume:
        raise ConfigError("--resume cannot be given with --sweep: re-launch the same sweep "
                          "command to continue it")
    spec, sweep_dir, values, configs = plan(request)
    if request.print_config:
        for i, (trial, cfg) in enumerate(zip(values, configs)):
            print(dump_config(cfg, f"trial {i}: {_fmt(trial)}"))
        return 0
    for cfg in configs:  # refuse before writing anything if a trial folder is another run's
        config = Path(cfg["run"]["run_dir"]) / "config.yaml"
        if config.exists() and not same_config(config, cfg):
            raise ConfigError(f"{config.parent} holds a trial configured differently; "
                              "choose another --run-dir for this sweep")
    check_free(sweep_dir, "sweep")  # another sweep in this folder: refused, nothing written
    sweep_dir.mkdir(parents=True, exist_ok=True)
    lock = FolderLock(sweep_dir, "sweep")
    lock.acquire()
    try:
        return _run_trials(spec, sweep_dir, values, configs)
    finally:
        lock.release()


def _run_trials(spec: dict[str, Any], sweep_dir: Path, values: list[dict[str, Any]],
                configs: list[Config]) -> int:
    """Run the trials not finished yet, one after another (the sweep folder's lock held)."""
    remove_partial_files(sweep_dir)
    record = sweep_dir / "sweep.yaml"
    if not record.exists():
        record.write_text(spec["path"].read_text(encoding="utf-8"), encoding="utf-8")
    metric, goal = _metric(spec, configs[0])
    env = {k: v for k, v in os.environ.items() if k != RUN_DIR_ENV}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT),
                                                      env.get("PYTHONPATH")]))
    statuses = []
    for i, (trial, cfg) in enumerate(zip(values, configs)):
        trial_dir = Path(cfg["run"]["run_dir"])
        head = f"trial {i + 1}/{len(configs)} ({trial_dir}): {_fmt(trial)}"
        if (trial_dir / "results.json").exists():
            print(f"{head}: finished earlier", flush=True)
            statuses.append("done")
            continue
        if (trial_dir / "checkpoints" / "last.ckpt").exists():
            args = ["--resume", "last", "--run-dir", str(trial_dir)]
        else:
            trial_dir.mkdir(parents=True, exist_ok=True)
            if not (trial_dir / "config.yaml").exists():
                (trial_dir / "config.yaml").write_text(
                    dump_config(cfg, f"trial {i} of the sweep {spec['path']}: {_fmt(trial)}"),
                    encoding="utf-8")
            args = ["--config", str(trial_dir / "config.yaml"), "--run-dir", str(trial_dir)]
        print(head, flush=True)
        rc, signum = _trial([sys.executable, *TRAIN, *args], env)
        statuses.append("done" if rc == 0 else f"failed (exit {rc})")
        write_summary(sweep_dir, values, configs, statuses, metric, goal)
        if signum is not None:
            print(f"error: sweep stopped by {signal_name(signum)} during trial {i + 1}, which "
                  "kept its checkpoint; run the same sweep command again to continue it",
                  file=sys.stderr, flush=True)
            return 128 + signum
    table = write_summary(sweep_dir, values, configs, statuses, metric, goal)
    print(f"\nsweep {sweep_dir}: {len(configs)} trials, sorted by {metric} ({goal})\n{table}")
    return 0 if all(s == "done" for s in statuses) else 1


def _trial(argv: list[str], env: dict[str, str]) -> tuple[int, int | None]:
    """Run one trial; SIGTERM or SIGINT to the sweep is passed on to it (exit status, signal).

    The trial runs in its own session, so a Ctrl-C at the terminal reaches it once, through
    the sweep, and it stops as a run does: a checkpoint, then its exit status.
    """
    proc = subprocess.Popen(argv, env=env, start_new_session=True)
    got: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        got.append(signum)
        proc.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        rc = proc.wait()
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    return rc, (got[0] if got else None)


def _fmt(trial: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in trial.items())


def _metric(spec: dict[str, Any], cfg: Config) -> tuple[str, str]:
    if spec.get("metric"):
        return spec["metric"]["name"], spec["metric"].get("goal", "minimize")
    from d2l_lightning.lit_models import task_module
    from d2l_lightning.models import get_spec

    name, mode = task_module(get_spec(cfg["model"]["name"]).task).monitor
    return name, "maximize" if mode == "max" else "minimize"


def write_summary(sweep_dir: Path, values: list[dict[str, Any]], configs: list[Config],
                  statuses: list[str], metric: str, goal: str) -> str:
    """Write ``summary.csv`` (sorted by ``metric``) and return it as a text table."""
    import json

    rows = []
    for i, (trial, cfg) in enumerate(zip(values, configs)):
        run_dir = Path(cfg["run"]["run_dir"])
        path = run_dir / "results.json"
        results = json.loads(path.read_text()) if path.exists() else {}
        status = statuses[i] if i < len(statuses) else "not run"
        row = {"trial": i, "status": status if results or status != "done" else "no results",
               **trial}
        row.update({k: v for k, v in results.items()
                    if k.startswith(("val/", "test/")) and isinstance(v, float)})
        row.update(epochs=results.get("epochs"), train_time_sec=results.get("train_time_sec"),
                   run_dir=str(run_dir))
        rows.append(row)
    sign = -1 if goal == "maximize" else 1
    rows.sort(key=lambda r: (not isinstance(r.get(metric), float),
                             sign * r[metric] if isinstance(r.get(metric), float) else 0,
                             r["trial"]))
    columns = list(dict.fromkeys(k for r in rows for k in r))
    tmp = sweep_dir / f".summary.csv.{os.getpid()}.tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, sweep_dir / "summary.csv")
    shown = ["trial", *values[0], metric, "status", "train_time_sec"]
    cells = [[_cell(r.get(c)) for c in shown] for r in rows]
    widths = [max(len(c), *(len(row[j]) for row in cells)) for j, c in enumerate(shown)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(shown, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)

"""Run folders: choosing one for a new run, and continuing a run from its folder alone.

A run folder holds ``config.yaml`` (the resolved config), ``metrics.csv``, ``checkpoints/``,
``results.json`` and ``export/``. ``--resume`` reads ``config.yaml`` plus every
``config.resume*.yaml`` written by earlier resumes (each records only what that resume
changed), so a killed run continues with no flags repeated.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from .cluster import RUN_DIR_ENV, is_follower
from .config import Config, ConfigError, Layer, dump_config, load_config_file
from .lock import LOCK_NAME, FolderLock, check_free

#: what may change when a run is resumed: how long it runs and what it writes or shows
RESUMABLE = {
    ("trainer", "max_epochs"), ("trainer", "max_steps"), ("trainer", "limit_train_batches"),
    ("trainer", "limit_val_batches"), ("trainer", "limit_test_batches"), ("trainer", "logger"),
    ("trainer", "enable_progress_bar"), ("trainer", "log_every_n_steps"), ("data", "data_dir"),
    ("run", "progress_bar"), ("run", "progress_every"), ("run", "ckpt_every_n_steps"),
    ("run", "diverged_after"), ("run", "test"), ("run", "run_dir"),
}
LENGTH_KEYS = (("trainer", "max_epochs"), ("trainer", "max_steps"),
               ("trainer", "limit_train_batches"))
#: schedules sized to the run's length when it starts (a resumed schedule keeps that size), and
#: the keys that size them, which cannot change on resume: cosine and one-cycle span all the
#: steps, step decays every third of ``max_epochs``
LENGTH_SCHEDULES = {"cosine": LENGTH_KEYS, "onecycle": LENGTH_KEYS,
                    "step": (("trainer", "max_epochs"),)}


@dataclass
class ResumePlan:
    """Everything known about a resume before anything is written.

    Attributes:
        run_dir: the run folder.
        ckpt: the checkpoint to continue from.
        layers: ``config.yaml`` and the earlier ``config.resume*.yaml`` files.
        changes: what this command line changes (run-length and logging keys only).
        record: the file that will record ``changes`` (``config.resume2.yaml``...).
        step: the checkpoint's global step.
        epoch: the checkpoint's epoch (0-based: the epoch it was written in).
    """

    run_dir: Path
    ckpt: Path
    layers: list[Layer]
    changes: Layer
    record: Path
    step: int
    epoch: int = 0

    def check(self, cfg: Config) -> None:
        """Refuse what cannot continue, before anything is written.

        A length shorter than what the checkpoint trained, and a length change of a schedule
        sized to the original length.
        """
        tr = cfg["trainer"]
        for key, need in (("max_epochs", self.epoch + 1), ("max_steps", self.step)):
            value = tr.get(key)
            if value not in (None, -1) and value < need:
                flag = self.changes.sources.get(("trainer", key), f"trainer.{key}")
                raise ConfigError(
                    f"{flag} {value} is shorter than what {self.run_dir} has trained already "
                    f"({self.ckpt.name} is at epoch {self.epoch + 1}, step {self.step}); give "
                    f"at least {need}, or branch off a shorter run with --config "
                    f"{self.run_dir / 'config.yaml'} --run-dir NEW")
        scheduler = cfg["optim"].get("scheduler")
        for section, key in LENGTH_SCHEDULES.get(scheduler, ()):
            if key in self.changes.values.get(section, {}):
                raise ConfigError(
                    f"{self.changes.sources[section, key]} cannot change when resuming a "
                    f"run with the {scheduler} schedule, which was sized to the run's "
                    f"original length; start a new run with --config "
                    f"{self.run_dir / 'config.yaml'} instead")

    def check_unchanged(self) -> None:
        """Refuse when the run moved on since this plan was made (another process resumed it).

        Called once this process holds the run's lock.
        """
        _, record = run_layers(self.run_dir)
        _, step, _, _ = read_checkpoint(self.ckpt, "--resume")
        if record != self.record or step != self.step:
            raise ConfigError(f"{self.run_dir} changed while this command was starting "
                              f"(another process continued it to step {step}); run the "
                              "command again")

    def write_record(self, header: str) -> None:
        """Write ``config.resume*.yaml`` with only what changed."""
        text = dump_config(self.changes.values, header) if self.changes.values else (
            "\n".join(f"# {line}" for line in header.splitlines()) + "\n{}\n")
        self.record.write_text(text, encoding="utf-8")


def newest_run(runs_root: Path) -> Path:
    """The run folder under ``runs_root`` whose ``last.ckpt`` was written last."""
    found = sorted(runs_root.glob("**/checkpoints/last.ckpt"), key=lambda q: q.stat().st_mtime)
    if not found:
        raise ConfigError(f"--resume last: no run under {runs_root}/ has a "
                          "checkpoints/last.ckpt; name the run with --run-dir")
    return found[-1].parent.parent


def plan_resume(resume: str, cli: Layer, configs: list[str],
                runs_root: Path = Path("runs")) -> ResumePlan:
    """Find the run and checkpoint, read the run's config, and check the flags given with it.

    Raises:
        ConfigError: a flag that would change the model, data or optimisation, a folder that
            is not a run, a missing or foreign checkpoint.
    """
    if configs:
        raise ConfigError("--config cannot be given with --resume: the run's own config.yaml "
                          "is used")
    for section, key, _ in cli.items():
        if (section, key) not in RESUMABLE:
            flag = cli.sources.get((section, key), f"--{section}.{key}")
            raise ConfigError(f"{flag} cannot be given with --resume, which continues a run "
                              f"exactly as configured (it would change the run's {section}); "
                              f"branch off instead with --config RUN/config.yaml {flag} ...")
    given_dir = cli.values.get("run", {}).get("run_dir")
    inherited = os.environ.get(RUN_DIR_ENV)
    if resume != "last":
        ckpt = Path(resume)
        if not ckpt.is_file():
            raise ConfigError(f"--resume: checkpoint {ckpt} does not exist")
        read = read_checkpoint(ckpt, "--resume")  # a file that is no checkpoint: named as such
        run_dir = Path(inherited) if inherited else ckpt.parent.parent
        if given_dir and Path(given_dir).resolve() != run_dir.resolve():
            raise ConfigError(f"--resume: checkpoint {ckpt} belongs to the run {run_dir}, "
                              f"not to --run-dir {given_dir}")
    else:
        run_dir = Path(inherited or given_dir or newest_run(runs_root))
        ckpt = run_dir / "checkpoints" / "last.ckpt"
    config = run_dir / "config.yaml"
    if not inherited and not is_follower(2):  # rank 0 (or the only process) checks the lock
        check_free(run_dir)  # a run another process is writing: refused before anything else
    if not config.is_file():
        raise ConfigError(f"--resume: {run_dir} is not a run folder of train.py "
                          "(it has no config.yaml)")
    if not ckpt.is_file():
        if resume == "last" and not any(run_dir.glob("checkpoints/*.ckpt")):
            raise ConfigError(f"--resume: {run_dir} has no checkpoint (the run stopped "
                              "before its first one), so there is nothing to continue; start "
                              "it again with the same command without --resume (--run-dir "
                              f"{run_dir} is reused)")
        raise ConfigError(f"--resume: {run_dir} has no checkpoint to continue from "
                          f"({ckpt} does not exist)")
    layers, record = run_layers(run_dir)
    arch, step, packed, epoch = read if resume != "last" else read_checkpoint(ckpt, "--resume")
    if packed:
        raise ConfigError(f"--resume: {ckpt} holds '{arch}' attention blocks of an earlier "
                          "version, whose optimizer state cannot continue in today's blocks; "
                          "its weights still load (export it with `python export.py CKPT`), "
                          "or start a new run")
    check_arch(arch, ckpt, layers, config, "--resume")
    changes = Layer(cli.label, {s: {k: v for k, v in values.items() if (s, k) != ("run", "run_dir")}
                                for s, values in cli.values.items()}, dict(cli.sources))
    changes.values = {s: values for s, values in changes.values.items() if values}
    return ResumePlan(run_dir, ckpt, layers, changes, record, step, epoch)


def run_layers(run_dir: Path) -> tuple[list[Layer], Path]:
    """A run's ``config.yaml`` and ``config.resume*.yaml`` as layers; the next record's name."""
    layers = [load_config_file(run_dir / "config.yaml")]
    n = 1
    record = run_dir / "config.resume.yaml"
    while record.exists():
        layers.append(load_config_file(record))
        n += 1
        record = run_dir / f"config.resume{n}.yaml"
    return layers, record


def read_checkpoint(ckpt: Path, what: str) -> tuple[str, int, bool, int]:
    """A checkpoint's architecture, global step, whether it holds old attention blocks, epoch.

    Raises:
        ConfigError: the file is no readable checkpoint of train.py.
    """
    import torch

    from d2l_lightning.compat import has_packed_attention

    try:
        saved = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
        return (saved["hyper_parameters"]["arch"], int(saved["global_step"]),
                has_packed_attention(saved["state_dict"]), int(saved.get("epoch", 0)))
    except Exception as e:  # any unreadable or foreign file: one sentence
        raise ConfigError(f"{what}: {ckpt} is not a readable checkpoint of train.py "
                          f"({type(e).__name__})") from None


def check_arch(arch: str, ckpt: Path, layers: list[Layer], config: Path, what: str) -> None:
    """Refuse a checkpoint written by another model than the run's config describes."""
    model = layers[0].values.get("model", {}).get("name")
    if arch != model:
        raise ConfigError(f"{what}: {ckpt} was written by a '{arch}' run, but {config} "
                          f"describes a '{model}' run")


def same_config(path: Path, cfg: Config) -> bool:
    """Whether the YAML file at ``path`` holds exactly ``cfg``."""
    import json

    import yaml

    try:
        saved = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return saved == json.loads(json.dumps(cfg, default=str))


#: what a run writes into its folder before its first checkpoint
RUN_FILES = ("config.yaml", "metrics.csv", "checkpoints", "tensorboard", "wandb", "lightning_logs",
             LOCK_NAME)


def failed_start(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds only what a train.py run writes before its first checkpoint.

    Its ``config.yaml`` must be a train.py config (the six sections), and nothing else may be
    there but the files such a run writes (and earlier ``attempt-N/`` folders).
    """
    import yaml

    from .config import SECTIONS

    try:
        saved = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    if not isinstance(saved, dict) or set(saved) != set(SECTIONS):
        return False
    return all(p.name in RUN_FILES or p.name.startswith("attempt-") for p in run_dir.iterdir())


def set_aside(run_dir: Path) -> Path:
    """Move everything in ``run_dir`` into a new ``run_dir/attempt-N/``; return that folder."""
    n = 1
    while (run_dir / f"attempt-{n}").exists():
        n += 1
    kept = run_dir / f"attempt-{n}"
    entries = [p for p in run_dir.iterdir()
               if not p.name.startswith("attempt-") and p.name != LOCK_NAME]
    kept.mkdir()
    for p in entries:
        p.rename(kept / p.name)
    return kept


@dataclass
class RunFolder:
    """Where a run goes, decided before anything is written (see :func:`choose_run_dir`).

    Attributes:
        path: the run folder.
        config_written: its ``config.yaml`` is there already (a resume, a reused folder).
        set_aside: earlier files of a failed start are to be moved to ``attempt-N/``.
        create: this process creates the folder (not a DDP child, not a follower of rank 0).
        lock: the folder's lock, held from :func:`make_run_dir` until :meth:`release`.
    """

    path: Path
    config_written: bool
    set_aside: bool = False
    create: bool = True
    lock: FolderLock | None = None

    def release(self) -> None:
        """Drop the folder's lock (at the end of the run, however it ends)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def choose_run_dir(cfg: Config, resuming: bool) -> RunFolder:
    """Pick the run folder, writing nothing (:func:`make_run_dir` creates it).

    A folder that holds a run (a checkpoint or results) is never reused by a new run. A folder
    with only the same ``config.yaml`` (a run killed before its first checkpoint, e.g. a sweep
    trial) is reused: nothing in it is lost, and ``metrics.csv`` skips rows it already has. A
    folder with another ``config.yaml`` but no checkpoint or results (a run that failed before
    its first checkpoint, e.g. on a data error) is not a run either: its files are moved to
    ``attempt-N/`` inside it, and the folder is reused. Under a cluster launcher only global
    rank 0 checks and creates it (``training.cluster``); the others take ``--run-dir`` as is.
    ``cfg["run"]["run_dir"]`` is set to the folder chosen.

    Raises:
        ConfigError: the folder holds another run.
    """
    inherited = os.environ.get(RUN_DIR_ENV)
    if inherited:  # a DDP child: the parent already chose and checked it
        return RunFolder(Path(inherited), True, create=False)
    run = cfg["run"]
    if is_follower(cfg["trainer"]["num_nodes"]):  # --run-dir is required (check_run_dir_given)
        return RunFolder(Path(run["run_dir"]), True, create=False)
    if run["run_dir"]:
        run_dir = Path(run["run_dir"])
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = f"{cfg['model']['name']}-{cfg['data']['name']}-{stamp}"
        run_dir, n = Path("runs") / base, 1
        while run_dir.exists():
            n += 1
            run_dir = Path("runs") / f"{base}-{n}"
        run["run_dir"] = str(run_dir)
    config = run_dir / "config.yaml"
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--run-dir {run_dir} is a file, not a folder; choose a folder "
                          "(it is created if it does not exist)")
    check_free(run_dir)  # another process writes it: refused, whatever the folder holds
    written = config.exists()
    if not resuming and written:
        started = _holds_run(run_dir)
        same = same_config(config, cfg)
        if started or not same and not failed_start(run_dir):
            raise ConfigError(f"{run_dir} already holds a run; choose another --run-dir, "
                              f"replay it elsewhere with --config {config} --run-dir NEW, or "
                              f"continue it with --resume last --run-dir {run_dir}")
        if not same:  # a failed start with other settings: kept aside by make_run_dir
            return RunFolder(run_dir, False, set_aside=True)
    return RunFolder(run_dir, written)


def _holds_run(run_dir: Path) -> bool:
    return (run_dir / "results.json").exists() or any(run_dir.glob("checkpoints/*.ckpt"))


def make_run_dir(folder: RunFolder, resume: ResumePlan | None = None) -> Path:
    """Create the chosen folder and take its lock; return its path.

    Once the lock is held, the choice is checked again (another process may have written the
    folder since :func:`choose_run_dir` looked), a failed start's files are set aside, and
    temporary files that a killed process left half-written are removed.

    Raises:
        ConfigError: another process holds the folder, or wrote a run into it meanwhile.
    """
    if not folder.create:
        return folder.path
    folder.path.mkdir(parents=True, exist_ok=True)
    lock = FolderLock(folder.path)
    lock.acquire()
    try:
        if resume is not None:
            resume.check_unchanged()
        elif _holds_run(folder.path) or not (folder.config_written or folder.set_aside) \
                and (folder.path / "config.yaml").exists():
            raise ConfigError(f"{folder.path} changed while this command was starting "
                              "(another process wrote a run into it); choose another --run-dir")
    except BaseException:
        lock.release()
        raise
    folder.lock = lock
    removed = remove_partial_files(folder.path)
    if removed:
        print(f"removed {len(removed)} partial file(s) that a stopped process left in "
              f"{folder.path}: {', '.join(p.name for p in removed)}", flush=True)
    if folder.set_aside:
        kept = set_aside(folder.path)
        print(f"{folder.path} held a run that stopped before its first checkpoint; its files "
              f"are kept in {kept}", flush=True)
    os.environ[RUN_DIR_ENV] = str(folder.path)
    return folder.path


#: a temporary file of an atomic write (``.NAME.XXXXXXXX`` from mkstemp, whose 8 characters
#: are ``[a-z0-9_]``, and ``.NAME.PID.tmp``)
PARTIAL = re.compile(r"\.[\w.-]+\.(ckpt|safetensors|json|csv|yaml|pt)\.([a-z0-9_]{8}|\d+\.tmp)")


def remove_partial_files(folder: Path) -> list[Path]:
    """Remove the temporary files of interrupted atomic writes in a run or sweep folder.

    Only names of this package's temporary files, in the folder, ``checkpoints/`` and
    ``export/``; call it with the folder's lock held (no live writer).
    """
    removed = []
    for sub in (folder, folder / "checkpoints", folder / "export"):
        if not sub.is_dir():
            continue
        for p in sorted(sub.iterdir()):
            if p.is_file() and PARTIAL.fullmatch(p.name):
                p.unlink()
                removed.append(p)
    return removed

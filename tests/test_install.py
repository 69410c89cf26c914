"""``pip install``: one importable package, its console scripts and configs, from any folder.

A wheel of the checkout goes into a fresh venv (offline, ``--no-deps``; this environment's
site-packages supply torch and the rest as a plain path). Everything then runs from folders
outside the checkout, beside a user's own ``models.py``, ``callbacks.py`` and ``train.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch
from test_readme_snippet import readme_block
from torchvision.io import encode_jpeg, write_file, write_png

from conftest import ROOT

SCRIPTS = ("d2l-train", "d2l-predict", "d2l-export", "d2l-plot")
USER_MODULES = ("models", "callbacks", "training", "datamodules", "train", "predict")


def sh(*args: str | Path, cwd: Path | None = None, env: dict | None = None):
    return subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONPATH": "",
                                            "WANDB_MODE": "offline", **(env or {})})


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh venv holding only the wheel plus this environment's site-packages as a path."""
    pytest.importorskip("setuptools")
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".venv", ".git", "build", "*.egg-info", "runs", "data", ".*cache", "__pycache__"))
    built = sh(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
               "--no-index", "-q", "-w", tmp / "wheel", src)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp / "wheel").glob("*.whl")
    env = tmp / "venv"
    base = Path(sys.base_prefix) / "bin" / "python3"
    assert sh(base, "-m", "venv", "--without-pip", env).returncode == 0
    python = env / "bin" / "python"
    done = sh(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps",
              "--no-index", "-q", wheel)
    assert done.returncode == 0, done.stderr[-2000:]
    purelib = sh(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    site = Path(purelib.stdout.strip())
    (site / "shared-env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return env


@pytest.fixture(scope="module")
def user_run(venv, tmp_path_factory, data_root) -> Path:
    """A user's folder whose own modules have our subpackages' names (importing one fails),
    with ``runs/RUN``: ``d2l-train`` of a shipped config (one batch) run from that folder."""
    folder = tmp_path_factory.mktemp("user")
    for name in USER_MODULES:
        (folder / f"{name}.py").write_text("raise SystemExit('the user file was imported')\n")
    proc = sh(venv / "bin" / "d2l-train", "--config", "fashion_mnist/lenet_bn-modern",
              "--data-dir", data_root, "--run-dir", Path("runs", "RUN"), "--fast-dev-run",
              cwd=folder)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return folder


def test_the_wheel_has_one_top_level_name_and_ships_the_configs(venv) -> None:
    site = next((venv / "lib").glob("python*/site-packages"))
    (record,) = site.glob("d2l_lightning-*.dist-info/RECORD")
    files = [line.split(",")[0] for line in record.read_text().splitlines()]
    top = {f.split("/")[0] for f in files if not f.startswith("../")}  # scripts are in bin/
    assert {t for t in top if not t.endswith(".dist-info")} == {"d2l_lightning"}, top
    assert "d2l_lightning/models/lenet.py" in files and not any("_src" in f for f in files)
    assert "d2l_lightning/configs/fashion_mnist/lenet_bn-modern.yaml" in files


def test_console_scripts_and_shipped_configs_work_beside_a_users_modules(venv, user_run,
                                                                         data_root) -> None:
    for script in SCRIPTS:
        proc = sh(venv / "bin" / script, "--help", cwd=user_run)
        assert proc.returncode == 0 and "usage:" in proc.stdout, (script, proc.stderr[-1500:])
    config = (user_run / "runs" / "RUN" / "config.yaml").read_text()  # the shipped config's
    assert "name: lenet_bn\n  recipe: modern\n" in config and "lr: 0.002\n" in config
    proc = sh(venv / "bin" / "d2l-train", "test", "--run-dir", "runs/RUN", cwd=user_run)
    assert proc.returncode == 2 and "no checkpoint to evaluate" in proc.stderr  # fast-dev-run
    proc = sh(venv / "bin" / "d2l-predict", "classify", "--export", "runs/RUN/export", "--eval",
              "--data", "fashion_mnist", "--data-dir", data_root, cwd=user_run)
    assert proc.returncode == 0 and proc.stdout.startswith("accuracy on fashion_mnist test"), (
        proc.stderr[-2000:])


def test_the_readme_snippet_runs_against_the_installed_package(venv, user_run) -> None:
    """Copied verbatim from the README into the user's folder (``runs/RUN/export`` in it)."""
    g = torch.Generator().manual_seed(0)
    write_png(torch.randint(0, 256, (3, 200, 200), dtype=torch.uint8, generator=g),
              str(user_run / "shoe.png"))
    write_file(str(user_run / "photo.jpg"),
               encode_jpeg(torch.randint(0, 256, (1, 17, 31), dtype=torch.uint8, generator=g)))
    snippet = readme_block("prepare_images")
    assert "from d2l_lightning.models import load_exported, prepare_images" in snippet
    (user_run / "snippet.py").write_text(snippet + "print(labels)\n")
    # the user's own models.py etc. beside the snippet change nothing
    proc = sh(venv / "bin" / "python", "snippet.py", cwd=user_run)
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = json.loads((user_run / "runs/RUN/export/config.json").read_text())["class_names"]
    labels = eval(proc.stdout.strip().splitlines()[-1])  # noqa: S307 (a printed list)
    assert len(labels) == 2 and set(labels) <= set(names)


def test_a_users_models_py_and_ours_import_side_by_side(venv, tmp_path) -> None:
    (tmp_path / "models.py").write_text("WHOSE = 'user'\n")
    proc = sh(venv / "bin" / "python", "-c", "import models, d2l_lightning.models as ours; "
              "print(models.WHOSE, ours.load_exported.__module__)", cwd=tmp_path)
    assert proc.stdout.split() == ["user", "d2l_lightning.models.export"], proc.stderr[-1500:]
    proc = sh(venv / "bin" / "python", "-c", "import d2l_lightning.training as t, sys; "
              "print(callable(t.fit), 'torch' in sys.modules)", cwd=tmp_path)
    assert proc.stdout.split() == ["True", "False"], proc.stderr[-1500:]  # fit imports lazily

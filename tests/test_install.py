"""``pip install .``: console scripts, and one top-level name that clashes with no user file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import ROOT

SCRIPTS = ("d2l-train", "d2l-predict", "d2l-export", "d2l-plot")


def sh(*args: str | Path, cwd: Path | None = None, env: dict | None = None):
    return subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh venv holding only the wheel (offline, ``--no-deps``) plus this environment's
    site-packages as a plain path (for torch, yaml...: no ``.pth`` of it is run)."""
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


def test_the_wheel_has_one_top_level_name(venv) -> None:
    site = next((venv / "lib").glob("python*/site-packages"))
    ours = {p.name for p in site.iterdir()} - {"shared-env.pth", "_virtualenv.pth"}
    assert {n for n in ours if not n.endswith(".dist-info")} == {"d2l_lightning"}
    (record,) = site.glob("d2l_lightning-*.dist-info/RECORD")
    top = {line.split("/")[0].split(",")[0] for line in record.read_text().splitlines()
           if not line.startswith("../")}  # the console scripts, in bin/
    assert {t for t in top if not t.endswith(".dist-info")} == {"d2l_lightning"}, top


def test_console_scripts_run_beside_a_users_models_py(venv, tmp_path, data_root) -> None:
    user = tmp_path / "user"
    user.mkdir()
    for name in ("models", "callbacks", "train", "predict"):
        (user / f"{name}.py").write_text("raise SystemExit('the user file was imported')\n")
    for script in SCRIPTS:
        proc = sh(venv / "bin" / script, "--help", cwd=user)
        assert proc.returncode == 0 and "usage:" in proc.stdout, (script, proc.stderr[-1500:])
    run = tmp_path / "run"
    proc = sh(venv / "bin" / "d2l-train", "--model", "mlp", "--data", "mnist", "--data-dir",
              data_root, "--run-dir", run, "--fast-dev-run", cwd=user,
              env={"PYTHONPATH": "", "WANDB_MODE": "offline"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = sh(venv / "bin" / "d2l-predict", "classify", "--export", run / "export", "--eval",
              "--data", "mnist", "--data-dir", data_root, cwd=user, env={"PYTHONPATH": ""})
    assert proc.returncode == 0 and proc.stdout.startswith("accuracy on mnist test"), (
        proc.stderr[-2000:])


def test_the_installed_copy_shadows_no_user_module(venv, tmp_path) -> None:
    user = tmp_path / "user"
    user.mkdir()
    (user / "models.py").write_text("WHOSE = 'user'\n")
    proc = sh(venv / "bin" / "python", "-c", "import models; print(models.WHOSE)", cwd=user,
              env={"PYTHONPATH": ""})
    assert proc.stdout.strip() == "user", proc.stderr[-1500:]
    proc = sh(venv / "bin" / "python", "-c", "import models", cwd=tmp_path,
              env={"PYTHONPATH": ""})
    assert "No module named 'models'" in proc.stderr

"""Shared fixtures: tiny datasets in the real on-disk formats, and CLI helpers."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

if "PYTEST_XDIST_WORKER" in os.environ:  # workers share the cores: one thread each, set
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # before any test module imports torch
ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = os.environ.get("D2L_DATA_DIR", "").strip()


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> Path:
    """Write a uint8 array as an IDX file (magic 0x0000080N, big-endian dims)."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def make_idx_dataset(folder: Path, n_train: int = 240, n_test: int = 60, seed: int = 0,
                     gz: bool = True) -> Path:
    """A learnable 10-class IDX dataset: each class is a bright block at its own place."""
    rng = np.random.default_rng(seed)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.arange(n) % 10
        rng.shuffle(labels)
        images = rng.integers(0, 60, size=(n, 28, 28))
        for i, c in enumerate(labels):
            r, col = divmod(int(c), 5)
            images[i, 4 + 12 * r: 12 + 12 * r, 1 + 5 * col: 6 + 5 * col] += 180
        return images.clip(0, 255).astype(np.uint8), labels.astype(np.uint8)

    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images, labels = draw(n)
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images, gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, gz)
    return folder


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """A data root with tiny MNIST and Fashion-MNIST fixtures."""
    root = tmp_path_factory.mktemp("data")
    make_idx_dataset(root / "mnist", seed=1)
    make_idx_dataset(root / "fashion-mnist", seed=2, gz=False)  # raw IDX is read as well
    return root


@pytest.fixture
def real_data_dir() -> Path:
    """The verified real datasets, or skip."""
    if not REAL_DATA or not Path(REAL_DATA).is_dir():
        pytest.skip("set D2L_DATA_DIR to a folder with the real datasets")
    return Path(REAL_DATA)


def run_cli(*args: str, env: dict | None = None, timeout: float = 300, cwd: Path | None = None,
            check: bool = False) -> subprocess.CompletedProcess:
    """Run ``python <args>`` from the repository root with a clean, offline environment."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline",
                "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), **(env or {})}
    full_env.pop("_D2L_RUN_DIR", None)
    proc = subprocess.run([sys.executable, *args], cwd=cwd or ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def call(main, *args, capsys) -> tuple[int, str, str]:
    """A CLI's ``main`` run in-process: ``(exit code, stdout, stderr)`` (argparse exits too)."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 2
    out, err = capsys.readouterr()
    return code, out, err


def read_results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())

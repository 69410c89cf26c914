"""The data layer's faults (docs/reliability.md, "Data"): read-only and damaged image-folder
caches, one-class folders, a --data-dir that is a file, Ctrl-C in a download, an out-of-range
$D2L_DOWNLOAD_TIMEOUT and validation sizes that leave a split empty."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_transfer import make_folder

from conftest import call, make_idx_dataset
from d2l_lightning.cli import train
from d2l_lightning.datamodules import download
from d2l_lightning.datamodules.folder import CACHE_DIR, load_folder
from faults_helpers import TINY, assert_unchanged, one_error_line, snapshot

FOLDER = ["--model", "lenet", "--data", "image_folder", "--batch-size", "4", "--max-steps", "1",
          "--limit-val-batches", "1", "--no-test", "--no-progress-bar"]


@pytest.fixture
def user_cache(tmp_path, monkeypatch) -> Path:
    """``$XDG_CACHE_HOME`` in the test's folder: nothing lands in the real ``~/.cache``."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "d2l-lightning" / "folders"


def _read_only(monkeypatch, *folders: Path) -> None:
    """``folders`` cannot be written: permission bits, and as root (who writes anyway) the
    answer of ``os.access``, which is what the code asks."""
    for folder in folders:
        for p in [folder, *folder.rglob("*")]:
            if p.is_dir():
                p.chmod(0o555)
    if os.geteuid() == 0:
        real = os.access
        roots = [f.resolve() for f in folders]

        def access(path, mode, *args, **kwargs):
            if mode & os.W_OK and any(Path(path).resolve().is_relative_to(r) for r in roots):
                return False
            return real(path, mode, *args, **kwargs)

        monkeypatch.setattr(os, "access", access)


def _writable_again(*folders: Path) -> None:
    for folder in folders:
        for p in [folder, *folder.rglob("*")]:
            if p.is_dir():
                p.chmod(0o755)


def test_read_only_image_folder_caches_in_the_user_cache(tmp_path, user_cache, monkeypatch,
                                                         capsys) -> None:
    """Refused before (cannot write root/.d2l-cache); now trains, the folder untouched."""
    root = make_folder(tmp_path / "pets", n=4)
    before = snapshot(root)
    _read_only(monkeypatch, root)
    try:
        code, out, err = call(train.main, *FOLDER, "--data-dir", root, "--run-dir",
                              tmp_path / "run", capsys=capsys)
    finally:
        _writable_again(root)
    assert code == 0, err[-2000:]
    notes = [line for line in out.splitlines() if "cannot be written" in line]
    assert len(notes) == 1 and str(user_cache) in notes[0] and str(root) in notes[0], out
    assert_unchanged(before, root)
    assert not (root / CACHE_DIR).exists() and set(snapshot(root)) == set(before)
    assert len(list(user_cache.glob("*/*/images.npy"))) == 1


def test_image_cache_that_can_be_written_nowhere_stays_in_memory(tmp_path, user_cache,
                                                                 monkeypatch, capsys) -> None:
    root = make_folder(tmp_path / "pets", n=2)
    user_cache.mkdir(parents=True)
    before = snapshot(root)
    _read_only(monkeypatch, root, tmp_path / "xdg")
    try:
        cache = load_folder(root)
    finally:
        _writable_again(root, tmp_path / "xdg")
    out = capsys.readouterr().out
    assert "stay in memory" in out and len(out.strip().splitlines()) == 1, out
    assert cache.images.shape == (4, 3, 28, 28) and cache.index is None
    assert_unchanged(before, root)
    assert not (root / CACHE_DIR).exists() and not any(user_cache.iterdir())


def _truncate(f: Path) -> None:
    f.write_bytes(f.read_bytes()[:-100])


@pytest.mark.parametrize("damage", [
    lambda c: _truncate(c / "images.npy"),
    lambda c: (c / "index.json").write_text("{not json"),
    lambda c: (c / "index.json").write_text("[1, 2]"),
    lambda c: (c / "labels.npy").unlink(),
    lambda c: (c / "index.json").unlink(),
], ids=["truncated-images", "garbage-index", "index-of-another-shape", "missing-labels",
        "missing-index"])
def test_damaged_image_cache_is_rebuilt(damage, tmp_path, user_cache, capsys) -> None:
    """A traceback before (mmap length, JSONDecodeError, 'Directory not empty'); rebuilt now."""
    root = make_folder(tmp_path / "pets", n=2)
    first = load_folder(root)
    images = np.array(first.images)
    damage(first.path)
    pictures = {p: h for p, h in snapshot(root).items() if CACHE_DIR not in p}
    capsys.readouterr()
    code, out, err = call(train.main, *FOLDER, "--data-dir", root, "--run-dir",
                          tmp_path / "run", capsys=capsys)
    assert code == 0 and "Traceback" not in err, err[-2000:]
    notes = [line for line in out.splitlines() if "is damaged" in line]
    assert len(notes) == 1 and str(first.path) in notes[0] and "rebuilding" in notes[0], out
    assert_unchanged(pictures, root)
    again = load_folder(root)
    assert not again.built and again.path == first.path and np.array_equal(again.images, images)


def test_one_class_image_folder_is_one_sentence(tmp_path, capsys) -> None:
    """A torchmetrics error before (exit 2 naming num_classes); the folder's sentence now."""
    root = make_folder(tmp_path / "pets", n=2)
    shutil.rmtree(root / "train" / "zebra")
    before = snapshot(root)
    code, _, err = call(train.main, *FOLDER, "--data-dir", root, "--run-dir", tmp_path / "run",
                        capsys=capsys)
    line = one_error_line(err)
    assert code == 1 and f"{root / 'train'} holds one class folder ('ant')" in line, line
    assert "at least two classes" in line
    assert_unchanged(before, root)
    assert not (root / CACHE_DIR).exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize("data", ["mnist", "image_folder"])
def test_data_dir_that_is_a_file_is_one_sentence(data, tmp_path, capsys) -> None:
    """'could not be downloaded' before (MNIST); 'does not exist' (a folder)."""
    f = tmp_path / "data.tar"
    f.write_bytes(b"not a folder")
    argv = TINY if data == "mnist" else FOLDER
    code, out, err = call(train.main, *argv, "--data-dir", f, "--run-dir", tmp_path / "run",
                          capsys=capsys)
    line = one_error_line(err)
    assert code == 1 and f"{f} is a file, not a folder" in line and "--data-dir" in line, line
    assert "downloading" not in out and f.read_bytes() == b"not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.tar"]


class _Interrupted:
    """A response that gives two chunks, then Ctrl-C arrives."""

    def __init__(self) -> None:
        self.reads = 0

    def read(self, size: int) -> bytes:
        self.reads += 1
        if self.reads > 2:
            raise KeyboardInterrupt
        return b"\x1f\x8b" + bytes(1000)

    def __enter__(self) -> _Interrupted:
        return self

    def __exit__(self, *exc) -> bool:
        return False


def test_ctrl_c_during_a_download_leaves_no_partial_file(tmp_path, monkeypatch, capsys) -> None:
    """A traceback before; one line, exit 130, the complete files kept, no partial one."""
    root = tmp_path / "data"
    make_idx_dataset(root / "mnist", n_train=48, n_test=12)
    (root / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    before = snapshot(root)
    monkeypatch.setattr(download.urllib.request, "urlopen", lambda url, timeout: _Interrupted())
    try:
        code, out, err = call(train.main, *TINY, "--data-dir", root, "--run-dir",
                              tmp_path / "run", capsys=capsys)
    except KeyboardInterrupt:  # else pytest takes it as the user's Ctrl-C and stops
        pytest.fail("Ctrl-C in a download escaped train.main")
    line = one_error_line(err)
    assert code == 130 and "interrupted while downloading t10k-labels-idx1-ubyte.gz" in line
    assert "downloading t10k-labels" in out
    assert_unchanged(before, root)
    assert set(snapshot(root)) == set(before)  # no .part file
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value", ["0", "-5", "inf", "nan", "1e300"])
def test_download_timeout_out_of_range_is_one_sentence(value, tmp_path, monkeypatch,
                                                       capsys) -> None:
    """Silently 20 s before (0, negative, nan), or waited forever (inf, 1e300)."""
    monkeypatch.setenv("D2L_DOWNLOAD_TIMEOUT", value)
    typo = tmp_path / "dta"
    code, out, err = call(train.main, "--model", "mlp", "--data", "mnist", "--data-dir", typo,
                          "--run-dir", tmp_path / "run", capsys=capsys)
    line = one_error_line(err)
    assert code == 1 and f"$D2L_DOWNLOAD_TIMEOUT must be a number of seconds above 0 and at " \
        f"most 3600, got '{value}'" in line, line
    assert "downloading" not in out
    assert not typo.exists() and not (tmp_path / "run").exists()


def _folder_with_val(tmp_path: Path) -> Path:
    root = make_folder(tmp_path / "pets", n=2)
    make_folder(tmp_path / "more", n=1, seed=1)
    (tmp_path / "more" / "train").rename(root / "val")
    return root


@pytest.mark.parametrize("data, val_size, code, needle", [
    ("mnist", 0, 2, "data.val_size must be at least 1 (validation examples), got 0"),
    ("mnist", -3, 2, "data.val_size must be at least 1 (validation examples), got -3"),
    ("mnist", 240, 1, "data.val_size 240 must be less than the 240 training images of MNIST"),
    ("image_folder", 0, 2, "data.val_size must be at least 1 (validation examples), got 0"),
    ("image_folder", 4, 1, "data.val_size 4 must be less than the 4 training images of"),
    ("val/", 2, 1, "data.val_size 2 does not apply"),
])
def test_val_size_that_leaves_a_split_empty_is_refused(data, val_size, code, needle, data_root,
                                                       tmp_path, capsys) -> None:
    """0 trained on 1/12 while config.yaml said 0; the whole set failed after the run folder."""
    if data == "mnist":
        root, argv = data_root, TINY
    else:
        root = make_folder(tmp_path / "pets", n=2) if data == "image_folder" else \
            _folder_with_val(tmp_path)
        argv = FOLDER
    before = snapshot(root)
    got, _, err = call(train.main, *argv, "--data-dir", root, "--val-size", val_size,
                       "--run-dir", tmp_path / "run", capsys=capsys)
    line = one_error_line(err)
    assert got == code and needle in line, line
    assert_unchanged(before, root)
    assert set(snapshot(root)) == set(before) and not (tmp_path / "run").exists()

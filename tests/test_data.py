"""Data: IDX decoding and its faults, checked downloads, the split, and the batch loader."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib

import numpy as np
import pytest
import torch

from conftest import make_idx_dataset, write_idx
from d2l_lightning.datamodules import DataError, resolve_data_dir
from d2l_lightning.datamodules.download import RemoteFile, download, ensure_files
from d2l_lightning.datamodules.idx import (
    FASHION_MNIST,
    MNIST,
    default_val_size,
    load_idx_split,
    load_split,
    read_idx,
    split_indices,
)
from d2l_lightning.datamodules.loader import TensorBatchLoader
from d2l_lightning.datamodules.registry import build_datamodule, data_names, data_tasks


def test_read_idx_gz_and_raw_round_trip(tmp_path) -> None:
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for gz in (True, False):
        path = write_idx(tmp_path / f"a{gz}-idx3-ubyte", arr, gz=gz)
        assert torch.equal(read_idx(path), torch.from_numpy(arr))


def test_truncated_idx_is_a_clear_error(tmp_path) -> None:
    path = write_idx(tmp_path / "t-idx3-ubyte", np.zeros((10, 28, 28), np.uint8), gz=False)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated"):
        read_idx(path)
    gz = write_idx(tmp_path / "u-idx3-ubyte", np.zeros((10, 28, 28), np.uint8))
    gz.write_bytes(gz.read_bytes()[:-20])
    with pytest.raises(DataError, match="truncated"):
        read_idx(gz)


def test_bad_magic_and_checksum_mismatch(tmp_path) -> None:
    bad = tmp_path / "bad-idx3-ubyte"
    bad.write_bytes(b"\x00\x00\x09\x03" + b"\x00" * 20)
    with pytest.raises(DataError, match="magic"):
        read_idx(bad)
    good = write_idx(tmp_path / "g-idx1-ubyte", np.arange(5, dtype=np.uint8), gz=False)
    with pytest.raises(DataError, match="checksum"):
        read_idx(good, expected_md5="0" * 32)
    assert read_idx(good, hashlib.md5(good.read_bytes()).hexdigest()).tolist() == [0, 1, 2, 3, 4]


def test_download_checks_checksum_and_writes_nothing_on_mismatch(tmp_path) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    payload = gzip.compress(b"hello")
    (mirror / "f.gz").write_bytes(payload)
    dest = tmp_path / "dest"
    wrong = RemoteFile("f.gz", "md5:" + "0" * 32, [mirror.as_uri()])
    with pytest.raises(DataError, match="checksum mismatch"):
        download(wrong, dest)
    assert not dest.exists()  # no partial or temporary file, not even the folder, left behind
    right = RemoteFile("f.gz", "md5:" + hashlib.md5(payload).hexdigest(),
                       ["http://127.0.0.1:9/", mirror.as_uri()])  # first mirror fails
    assert download(right, dest).read_bytes() == payload


def test_offline_missing_dataset_message_names_files_folder_and_source(tmp_path) -> None:
    ds = dataclasses.replace(FASHION_MNIST, mirrors=("http://127.0.0.1:9/",))
    folder = tmp_path / "fashion-mnist"
    with pytest.raises(DataError) as info:
        ensure_files(ds.title, folder, ds.remote_files(), [None] * 4)
    msg = str(info.value)
    for needle in ("Fashion-MNIST", "train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz",
                   str(folder.resolve()), "http://127.0.0.1:9/", "D2L_DATA_DIR"):
        assert needle in msg


def test_data_root_resolution(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("D2L_DATA_DIR", str(tmp_path))
    assert str(resolve_data_dir("x")) == "x"  # the flag wins over the variable
    assert resolve_data_dir(None) == tmp_path
    monkeypatch.delenv("D2L_DATA_DIR")
    assert str(resolve_data_dir(None)) == "data"


def test_split_is_seeded_disjoint_and_complete() -> None:
    tr, va = split_indices(120, 10, seed=3)
    tr2, va2 = split_indices(120, 10, seed=3)
    assert torch.equal(tr, tr2) and torch.equal(va, va2)
    assert len(va) == 10 and len(set(tr.tolist()) | set(va.tolist())) == 120
    assert not set(tr.tolist()) & set(va.tolist())
    assert not torch.equal(split_indices(120, 10, seed=4)[1], va)


def test_datamodule_shapes_properties_and_uint8_batches(data_root) -> None:
    dm = build_datamodule("mnist", data_dir=data_root, batch_size=32)
    dm.prepare_data()
    dm.setup()
    assert dm.sizes() == {"train": 220, "val": 20, "test": 60}
    assert dm.num_classes == 10 and len(dm.class_names) == 10 and dm.mean == (0.1307,)
    x, y = next(iter(dm.train_dataloader()))
    assert x.dtype == torch.uint8 and x.shape == (32, 28, 28) and y.dtype == torch.int64
    raw = build_datamodule("fashion_mnist", data_dir=data_root, batch_size=8)  # raw IDX files
    raw.setup()
    assert raw.class_names[0] == "t-shirt" and raw.sizes()["test"] == 60


def test_data_registry_tasks() -> None:
    assert set(data_names("image_classification")) >= {"mnist", "fashion_mnist"}
    assert data_tasks("synthetic_regression") == ["regression"]
    with pytest.raises(KeyError, match="fashion_mnist"):
        data_tasks("cifar")


def test_loader_covers_each_example_once_and_reshuffles_per_epoch() -> None:
    data = torch.arange(103)
    loader = TensorBatchLoader((data, data), batch_size=10, shuffle=True, seed=1)
    assert len(loader) == 11
    first = torch.cat([b[0] for b in loader])
    assert sorted(first.tolist()) == list(range(103))
    loader.sampler.set_epoch(1)
    second = torch.cat([b[0] for b in loader])
    assert sorted(second.tolist()) == list(range(103)) and not torch.equal(first, second)


def test_loader_shards_ranks_evenly_for_training_and_exactly_for_evaluation() -> None:
    data = torch.arange(11)
    train = [torch.cat([b[0] for b in TensorBatchLoader((data,), 4, True, rank=r, world_size=2)])
             for r in range(2)]
    assert len(train[0]) == len(train[1]) == 6  # padded by wrap-around, as DistributedSampler
    assert set(train[0].tolist()) | set(train[1].tolist()) == set(range(11))
    ev = [torch.cat([b[0] for b in TensorBatchLoader((data,), 4, False, rank=r, world_size=2,
                                                      even=False)]) for r in range(2)]
    assert sorted(ev[0].tolist() + ev[1].tolist()) == list(range(11))  # each exactly once


def test_loader_state_resumes_on_the_next_untrained_batch() -> None:
    data = torch.arange(50)
    full = [b[0] for b in TensorBatchLoader((data,), 5, shuffle=True, seed=7)]
    loader = TensorBatchLoader((data,), 5, shuffle=True, seed=7)
    it = iter(loader)
    for _ in range(3):
        next(it)
    state = loader.state_dict()
    assert state == {"epoch": 0, "trained": 3}
    fresh = TensorBatchLoader((data,), 5, shuffle=True, seed=7)
    fresh.load_state_dict(state)
    rest = [b[0] for b in fresh]
    assert all(torch.equal(a, b) for a, b in zip(rest, full[3:])) and len(rest) == 7


def test_real_datasets_have_official_sizes(real_data_dir) -> None:
    for ds in (MNIST, FASHION_MNIST):
        x, y = load_split(ds, real_data_dir, "test")
        assert x.shape == (10000, 28, 28) and y.shape == (10000,)
        tr, _ = load_split(ds, real_data_dir, "train")
        va, _ = load_split(ds, real_data_dir, "val")
        assert len(tr) + len(va) == 60000 and len(va) == 5000
    x, _ = load_split(FASHION_MNIST, real_data_dir, "train")
    full = torch.cat([x, load_split(FASHION_MNIST, real_data_dir, "val")[0]]).float() / 255
    assert abs(full.mean().item() - FASHION_MNIST.mean) < 1e-3
    assert abs(full.std().item() - FASHION_MNIST.std) < 1e-3


def test_fixture_builder_makes_learnable_classes(tmp_path) -> None:
    make_idx_dataset(tmp_path / "mnist", n_train=20, n_test=10)
    x, y = load_split(MNIST, tmp_path, "test")
    assert x.shape == (10, 28, 28) and set(y.tolist()) == set(range(10))


def test_split_sizes_at_their_boundaries_and_the_default_val_size() -> None:
    """1 and n - 1 validation examples fit; 0 and n are refused with the range that fits."""
    assert [len(t) for t in split_indices(5, 1, seed=0)] == [4, 1]
    assert [len(t) for t in split_indices(5, 4, seed=0)] == [1, 4]
    for bad in (0, 5):
        with pytest.raises(DataError, match=f"^validation size {bad} must be between 1 and 4$"):
            split_indices(5, bad, seed=0)
    # one twelfth, at least one: MNIST's 60,000 -> 5,000; 6 -> round(0.5) = 0 -> 1
    assert [default_val_size(n) for n in (60000, 24, 6)] == [5000, 2, 1]


def test_load_split_serves_the_seeded_train_val_split_and_the_test_files(tmp_path) -> None:
    make_idx_dataset(tmp_path / "mnist", n_train=24, n_test=10)
    xi, yi = load_idx_split(MNIST, tmp_path, train=True)
    xt, yt = load_idx_split(MNIST, tmp_path, train=False)
    x, y = load_split(MNIST, tmp_path, "test")
    assert torch.equal(x, xt) and torch.equal(y, yt) and len(y) == 10
    tr, va = split_indices(24, 2, seed=0)  # the default: seed 0, 24 / 12 = 2 for validation
    for split, idx in (("train", tr), ("val", va)):
        x, y = load_split(MNIST, tmp_path, split)
        assert torch.equal(x, xi[idx]) and torch.equal(y, yi[idx])
    x, y = load_split(MNIST, tmp_path, "val", seed=5, val_size=3)
    assert torch.equal(y, yi[split_indices(24, 3, seed=5)[1]]) and len(y) == 3
    with pytest.raises(DataError, match="^unknown split 'dev'; choose from: train, val, test$"):
        load_split(MNIST, tmp_path, "dev")

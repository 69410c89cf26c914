"""Device-resident data (``data.on_device``, issue 16): the same batches as the host path.

With ``device=cpu`` the resident path runs every line of its code (tensors moved, indices
moved once per epoch, batches indexed "on the device") with the CPU as the device; the
CUDA-only test checks the same on a GPU.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import d2l_lightning.datamodules.loader as loader_mod
from d2l_lightning.datamodules import DataError
from d2l_lightning.datamodules.bert import EpochLoader
from d2l_lightning.datamodules.lm_text import RandomWindowLoader, SequentialLoader
from d2l_lightning.datamodules.loader import TensorBatchLoader, resident_device
from d2l_lightning.datamodules.registry import build_datamodule

CPU = torch.device("cpu")
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _loaders(device: torch.device | None, rank: int = 0, world: int = 1) -> dict:
    g = torch.Generator().manual_seed(0)  # the same data for every call
    images = torch.randint(0, 256, (50, 28, 28), dtype=torch.uint8, generator=g)
    labels = torch.arange(50) % 10
    corpus = torch.randint(0, 30, (700,), generator=g)
    return {
        "tensor": TensorBatchLoader((images, labels), 8, shuffle=True, seed=3, rank=rank,
                                    world_size=world, device=device),
        "epoch": EpochLoader(lambda e: (labels * (e + 1), labels), 8, seed=3, rank=rank,
                             world_size=world, device=device),
        "random": RandomWindowLoader(corpus, 4, 7, seed=3, rank=rank, world_size=world,
                                     device=device),
        "sequential": SequentialLoader(corpus, 4, 7, random_offset=True, seed=3, rank=rank,
                                       world_size=world, device=device),
    }


def _epoch(loader, epoch: int, resume_at: int = 0) -> list[tuple[torch.Tensor, ...]]:
    loader.sampler.set_epoch(epoch)
    if resume_at:
        loader.load_state_dict({"epoch": epoch, "trained": resume_at})
    return [tuple(t.cpu() for t in batch) for batch in loader]


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        len(x) == len(y) and all(torch.equal(s, t) for s, t in zip(x, y)) for x, y in zip(a, b))


@pytest.mark.parametrize("kind", ["tensor", "epoch", "random", "sequential"])
@pytest.mark.parametrize("rank, world", [(0, 1), (1, 2)])
def test_resident_batches_equal_the_host_batches(kind, rank, world, monkeypatch) -> None:
    moved = []
    real = loader_mod.to_device

    def counting(tensor, device):  # every crossing of the resident path goes through here
        if device is not None:
            moved.append(tuple(tensor.shape))
        return real(tensor, device)

    import d2l_lightning.datamodules.language_model as lm_mod
    monkeypatch.setattr(loader_mod, "to_device", counting)
    monkeypatch.setattr(lm_mod, "to_device", counting)
    host, resident = _loaders(None, rank, world)[kind], _loaders(CPU, rank, world)[kind]
    for epoch in (0, 1):
        moved.clear()
        batches = _epoch(resident, epoch)
        assert _same(_epoch(host, epoch), batches), (kind, epoch)
        assert len(moved) <= 3  # per epoch, not per batch (there are more batches than that)
        assert len(batches) > 3
    # mid-epoch resume: the resident loader continues on the host loader's next batch
    assert _same(_epoch(host, 1)[2:], _epoch(resident, 1, resume_at=2))


def test_resident_loaders_hold_their_tensors_on_the_device() -> None:
    for kind, loader in _loaders(CPU).items():
        assert loader.device == CPU, kind
    assert _loaders(None)["tensor"].device is None


def test_auto_is_on_for_cuda_only_and_when_the_splits_fit(monkeypatch) -> None:
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1000, 4000))
    assert resident_device("auto", cuda, 250) == cuda
    assert resident_device("auto", cuda, 251) is None  # over a quarter of the free memory
    assert resident_device(True, cuda, 10**12) == cuda  # forced on, whatever the size
    assert resident_device("auto", CPU, 1) is None
    assert resident_device(True, CPU, 1) == CPU
    assert resident_device(False, cuda, 1) is None
    assert resident_device(True, None, 1) is None  # no trainer: the host


@pytest.mark.parametrize("name, task", [("fashion_mnist", "image_classification"),
                                        ("time_machine", "language_modeling")])
def test_datamodule_moves_each_split_once_and_serves_it_from_the_device(
        name, task, data_root, tmp_path) -> None:
    if name == "time_machine":
        from test_language_modeling import BOOK

        (tmp_path / "timemachine").mkdir()
        (tmp_path / "timemachine" / "timemachine.txt").write_text(BOOK * 4, encoding="utf-8")
    root = data_root if name == "fashion_mnist" else tmp_path
    host = build_datamodule(name, task, data_dir=str(root), batch_size=8, on_device=False)
    dm = build_datamodule(name, task, data_dir=str(root), batch_size=8, on_device=True)
    for d in (host, dm):
        d.setup("fit")
        d.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=CPU), global_rank=0,
                                    world_size=1)
    assert host.data_device() is None and dm.data_device() == CPU
    for split in ("train", "val", "test"):
        a, b = (getattr(d, f"{split}_dataloader")() for d in (host, dm))
        assert b.device == CPU and getattr(a, "device", None) is None
        assert _same(list(a), list(b)), split
    first = dm.__dict__["_resident"]["train"]
    dm.train_dataloader()
    assert dm.__dict__["_resident"]["train"] is first  # moved once, not per loader
    auto = build_datamodule(name, task, data_dir=str(root), on_device="auto")
    auto.trainer = dm.trainer
    assert auto.data_device() is None  # auto: off on the CPU


def test_a_bad_on_device_value_is_refused(data_root) -> None:
    with pytest.raises(DataError, match="^on_device must be auto, true or false, got 'yes'$"):
        build_datamodule("mnist", data_dir=str(data_root), on_device="yes")


def test_train_py_with_resident_data_gives_the_host_run_s_metrics(data_root, tmp_path) -> None:
    from conftest import read_results
    from d2l_lightning.cli import train

    runs = {}
    for flag in ("true", "false"):
        run = tmp_path / flag
        assert train.main(["--model", "lenet", "--data-dir", str(data_root), "--max-epochs", "1",
                           "--batch-size", "32", "--on-device", flag, "--run-dir", str(run),
                           "--no-progress-bar", "--accelerator", "cpu"]) == 0
        runs[flag] = read_results(run)
    keys = [k for k in runs["false"] if k.startswith(("val/", "test/")) and "matrix" not in k]
    assert keys and all(runs["true"][k] == runs["false"][k] for k in keys)


@CUDA
def test_resident_batches_on_cuda_equal_the_host_batches() -> None:
    cuda = torch.device("cuda", torch.cuda.current_device())
    for kind, loader in _loaders(cuda, 1, 2).items():
        host = _loaders(None, 1, 2)[kind]
        batches = list(loader)
        assert all(t.device == cuda for batch in batches for t in batch), kind
        assert _same(_epoch(host, 0), [tuple(t.cpu() for t in b) for b in batches]), kind
    from lightning.pytorch.utilities import move_data_to_device

    batch = next(iter(_loaders(cuda)["tensor"]))
    moved = move_data_to_device(batch, cuda)  # Lightning's transfer: nothing to copy
    assert all(a.data_ptr() == b.data_ptr() for a, b in zip(batch, moved))

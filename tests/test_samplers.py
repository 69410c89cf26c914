"""Edge cases of the batch samplers (mutation survivors of datamodules/loader.py, timemachine.py).

What the training numbers depend on: every example or token served exactly once per epoch,
shuffled, seeded, sharded evenly, and resumable at the exact batch.
"""

from __future__ import annotations

import math

import pytest
import torch

from d2l_lightning.datamodules import DataError
from d2l_lightning.datamodules.lm_text import RandomWindowLoader, SequentialLoader
from d2l_lightning.datamodules.loader import IndexSampler, TensorBatchLoader
from d2l_lightning.datamodules.registry import build_datamodule


@pytest.mark.parametrize("n, world", [(11, 1), (11, 2), (12, 3), (7, 4)])
@pytest.mark.parametrize("even", [True, False])
def test_index_sampler_length_equals_its_indices(n: int, world: int, even: bool) -> None:
    shares = [IndexSampler(n, True, 5, r, world, even) for r in range(world)]
    for s in shares:
        assert len(s) == len(s.indices())
    served = torch.cat([s.indices() for s in shares])
    if even:  # padded by wrap-around to equal shares
        assert len(served) == math.ceil(n / world) * world
    else:  # every example once
        assert sorted(served.tolist()) == list(range(n))
    assert set(served.tolist()) == set(range(n))


def test_loader_defaults_order_and_batch_counts() -> None:
    data = torch.arange(10)
    assert [b[0].tolist() for b in TensorBatchLoader((data,), 4)] == [[0, 1, 2, 3],
                                                                       [4, 5, 6, 7], [8, 9]]
    dropped = TensorBatchLoader((data,), 4, drop_last=True)
    assert len(dropped) == 2 and isinstance(len(dropped), int) and len(list(dropped)) == 2
    assert len(TensorBatchLoader((data,), 1)) == 10  # batches of one are allowed
    with pytest.raises(ValueError, match="^all tensors need the same length$"):
        TensorBatchLoader((data, data[:3]), 2)
    with pytest.raises(ValueError, match="^batch_size must be positive, got 0$"):
        TensorBatchLoader((data,), 0)


def test_loader_position_is_zero_between_epochs_and_counts_from_a_resume() -> None:
    loader = TensorBatchLoader((torch.arange(30),), 4, shuffle=True, seed=2)
    assert loader.state_dict() == {"epoch": 0, "trained": 0}
    list(loader)
    assert loader.state_dict() == {"epoch": 0, "trained": 0}  # a finished epoch
    resumed = TensorBatchLoader((torch.arange(30),), 4, shuffle=True, seed=2)
    resumed.load_state_dict({"epoch": 1, "trained": 3})
    it = iter(resumed)
    next(it), next(it)
    assert resumed.state_dict() == {"epoch": 1, "trained": 5}


def test_random_windows_are_shuffled_seeded_and_shard_evenly() -> None:
    corpus = torch.arange(500)
    starts = {}
    for seed in (3, 4):
        loader = RandomWindowLoader(corpus, batch_size=8, num_steps=10, seed=seed)
        starts[seed] = loader.window_starts()
        assert not torch.equal(starts[seed], starts[seed].sort().values)  # shuffled
    assert not torch.equal(starts[3] - starts[3].min(), starts[4] - starts[4].min())
    # 49 windows over two ranks: padded to 25 each, so both ranks run the same steps
    shards = [RandomWindowLoader(corpus, 8, 10, 3, r, 2) for r in (0, 1)]
    assert [len(s.sampler) for s in shards] == [25, 25] and len(shards[0]) == len(shards[1])
    # the smallest corpus with one window works; one token less is refused by name
    assert len(list(RandomWindowLoader(torch.arange(10), 4, 5))) == 1
    with pytest.raises(DataError, match=r"^9 tokens are too few for windows of 5 "
                                        r"\(lower --num-steps\)$"):
        RandomWindowLoader(torch.arange(9), 4, 5)


def test_sequential_rows_use_every_token_after_the_offset() -> None:
    corpus = torch.arange(103)
    loader = SequentialLoader(corpus, 2, 5, random_offset=True, seed=1)
    for epoch in range(4):  # rows of (103 - 4) // 2 = 49 contiguous tokens after the offset
        loader.sampler.set_epoch(epoch)
        rows = loader.rows()
        assert rows.shape == (2, 49)
        offset = int(rows[0, 0])
        assert 0 <= offset < 5 and torch.equal(rows.flatten(), corpus[offset:offset + 98])
    # every target once: 12 tokens per row -> 11 targets in batches of 5, 5, 1
    loader = SequentialLoader(torch.arange(24), 2, 5)
    widths = [y.shape[1] for _, y in loader]
    assert widths == [5, 5, 1] and len(loader) == 3
    loader = SequentialLoader(torch.arange(22), 2, 5)  # 11 per row: 10 targets, no empty batch
    assert [y.shape[1] for _, y in loader] == [5, 5] and len(loader) == 2
    assert len(list(SequentialLoader(torch.arange(4), 2, 5))) == 1  # rows of 2: one target
    with pytest.raises(DataError, match=r"^3 tokens are too few for 2 streams: .*delete it .*"
                                        r"else lower --batch-size$"):
        SequentialLoader(torch.arange(3), 2, 5)


def test_time_machine_held_out_tail_sizes(tmp_path) -> None:
    folder = tmp_path / "timemachine"
    folder.mkdir()

    def sizes(text: str, fraction: float) -> dict:
        (folder / "timemachine.txt").write_text(text)
        dm = build_datamodule("time_machine", data_dir=str(tmp_path), val_fraction=fraction)
        dm.setup()
        return dm.sizes()

    assert sizes("abcdefghij", 0.15) == {"train": 9, "val": 1, "test": 1, "vocab": 10}
    assert sizes("abc", 0.5)["train"] == 2  # two training tokens are enough
    with pytest.raises(DataError, match=r"^The Time Machine \(.*timemachine.txt\) holds only 2 "
                                        r"char tokens: the file is empty or cut short; delete it"):
        sizes("ab", 0.5)


@pytest.mark.parametrize("sampler", ["random", "sequential"])
def test_datamodule_train_loader_passes_its_sampler_seed_offset_and_rank(tmp_path, sampler) -> None:
    """The Time Machine's training loader is the chosen sampler, seeded, sharded by rank."""
    from types import SimpleNamespace
    (tmp_path / "timemachine").mkdir()
    (tmp_path / "timemachine" / "timemachine.txt").write_text(
        "the time traveller for so it will be convenient to speak of him " * 40,
        encoding="utf-8")
    dm = build_datamodule("time_machine", data_dir=str(tmp_path), batch_size=3, num_steps=5,
                          seed=7, sampler=sampler)
    dm.setup("fit")
    dm.trainer = SimpleNamespace(global_rank=1, world_size=2)  # the second of two processes
    corpus = dm.corpora["train"]
    if sampler == "random":
        expected = RandomWindowLoader(corpus, 3, 5, 7, 1, 2)
    else:  # the Time Machine draws a seeded random offset each epoch (d2l §9.3.3)
        expected = SequentialLoader(corpus, 3, 5, random_offset=True, seed=7, rank=1,
                                    world_size=2)
    loader = dm.train_dataloader()
    assert type(loader) is type(expected)
    for epoch in (0, 1):
        loader.sampler.set_epoch(epoch)  # what Lightning calls each epoch
        expected.sampler.set_epoch(epoch)
        got, want = list(loader), list(expected)
        assert len(got) == len(want) > 0
        assert all(torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(got, want))

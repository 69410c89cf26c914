"""The book's settings that differ from ours: the IDX ``book`` data setting (d2l §4.2, §7.6),
d2l 0.17's translation recipes (§9.7, §10.4, §10.7) and the WikiText plateau schedule."""

from __future__ import annotations

import json

import pytest
import torch

import train
from conftest import make_idx_dataset, read_results
from datamodules import DataError
from datamodules.idx import FASHION_MNIST, MNIST, load_idx_split, load_split
from datamodules.registry import build_datamodule


@pytest.fixture()
def tiny(tmp_path):
    make_idx_dataset(tmp_path / "fashion-mnist", n_train=48, n_test=12, seed=2)
    return tmp_path


def test_book_setting_trains_on_all_images_validates_on_test_and_does_not_normalise(tiny):
    dm = build_datamodule("fashion_mnist", data_dir=tiny, batch_size=8, setting="book")
    dm.setup()
    assert dm.sizes() == {"train": 48, "val": 12, "test": 12}
    xi, yi = load_idx_split(FASHION_MNIST, tiny, train=True)
    assert torch.equal(dm.train_set[0], xi) and torch.equal(dm.train_set[1], yi)
    assert all(torch.equal(v, t) for v, t in zip(dm.val_set, dm.test_set))
    info = dm.data_info()
    assert info["mean"] == [0.0] and info["std"] == [1.0]
    # the default is unchanged: a seeded 1/12 validation split and the data's statistics
    default = build_datamodule("fashion_mnist", data_dir=tiny, batch_size=8)
    default.setup()
    assert default.sizes() == {"train": 44, "val": 4, "test": 12}
    assert default.data_info()["mean"] == [FASHION_MNIST.mean]
    # load_split (predict.py --eval) serves the same splits
    assert torch.equal(load_split(FASHION_MNIST, tiny, "train", setting="book")[0], xi)
    assert torch.equal(load_split(FASHION_MNIST, tiny, "val", setting="book")[0], dm.test_set[0])
    assert len(load_split(FASHION_MNIST, tiny, "train")[0]) == 44


def test_book_setting_feeds_pixels_in_0_1_to_the_model(tiny, tmp_path):
    cfg = train.config_from_argv(["--model", "lenet", "--data-dir", str(tiny), "--data-setting",
                                  "book", "--run-dir", str(tmp_path / "r")])
    assert cfg["data"]["setting"] == "book"
    dm = train.build_data(cfg)
    dm.setup()
    module = train.build_module(cfg, dm.data_info())
    x, _ = next(iter(dm.train_dataloader()))
    seen = module.on_after_batch_transfer((x, None), 0)[0]
    assert torch.allclose(seen, x[:, None].float() / 255)
    assert module.export_config()["preprocess"]["mean"] == [0.0]
    assert module.export_config()["preprocess"]["std"] == [1.0]


def test_book_setting_run_records_its_sizes_and_exports_unnormalised(tiny, tmp_path):
    run = tmp_path / "run"
    assert train.main(["--model", "lenet", "--data-dir", str(tiny), "--data-setting", "book",
                       "--max-epochs", "1", "--run-dir", str(run), "--no-progress-bar"]) == 0
    res = read_results(run)
    assert res["dataset_sizes"] == {"train": 48, "val": 12, "test": 12}
    assert res["val/acc"] == pytest.approx(res["test/acc"])  # the same images, the same weights
    pre = json.loads((run / "export" / "config.json").read_text())["preprocess"]
    assert pre["mean"] == [0.0] and pre["std"] == [1.0]


def _exit_code(argv: list[str]) -> int:
    try:
        return train.main(argv)
    except SystemExit as e:  # argparse's own refusal of a bad choice
        return e.code


@pytest.mark.parametrize("argv, message", [
    (["--data-setting", "paper"], "invalid choice: 'paper'"),
    (["--data.setting=paper"], "data.setting: invalid choice 'paper'"),
    (["--data-setting", "book", "--val-size", "100"], "val_size 100 does not apply"),
    (["--model", "gru", "--data", "time_machine", "--data-setting", "book"], "setting"),
])
def test_bad_data_settings_are_refused_with_exit_2_and_nothing_written(argv, message, tiny,
                                                                       tmp_path, capsys):
    argv = argv if "--model" in argv else ["--model", "lenet", *argv]
    run = tmp_path / "run"
    assert _exit_code([*argv, "--data-dir", str(tiny), "--run-dir", str(run)]) == 2
    assert message in capsys.readouterr().err
    assert not run.exists()


def test_unknown_setting_is_refused_by_the_datamodule_and_load_split(tiny):
    with pytest.raises(DataError, match="^unknown data setting 'paper'; choose from: split, book$"):
        build_datamodule("mnist", data_dir=tiny, setting="paper")
    with pytest.raises(DataError, match="validates on the test set"):
        load_split(MNIST, tiny, "val", val_size=5, setting="book")


def test_real_book_setting_has_60000_training_images_and_val_is_test(real_data_dir):
    dm = build_datamodule("fashion_mnist", data_dir=real_data_dir, setting="book")
    dm.setup()
    assert dm.sizes() == {"train": 60000, "val": 10000, "test": 10000}
    assert torch.equal(dm.val_set[1], dm.test_set[1])

"""The book's settings that differ from ours: the IDX ``book`` data setting (d2l §4.2, §7.6),
d2l 0.17's translation recipes (§9.7, §10.4, §10.7) and the WikiText plateau schedule."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import make_idx_dataset, read_results
from d2l_lightning.cli import train
from d2l_lightning.datamodules import DataError
from d2l_lightning.datamodules.idx import FASHION_MNIST, MNIST, load_idx_split, load_split
from d2l_lightning.datamodules.registry import build_datamodule
from d2l_lightning.training.command_line import config_from_argv
from d2l_lightning.training.run import build_data, build_module


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
    cfg = config_from_argv(["--model", "lenet", "--data-dir", str(tiny), "--data-setting",
                                  "book", "--run-dir", str(tmp_path / "r")])
    assert cfg["data"]["setting"] == "book"
    dm = build_data(cfg)
    dm.setup()
    module = build_module(cfg, dm.data_info())
    x, _ = next(iter(dm.train_dataloader()))
    seen = module.on_after_batch_transfer((x, None), 0)[0]
    assert torch.allclose(seen, x[:, None].float() / 255)
    assert module.export_config()["preprocess"]["mean"] == [0.0]
    assert module.export_config()["preprocess"]["std"] == [1.0]


def test_book_setting_run_records_its_sizes_and_exports_unnormalised(tiny, tmp_path, capsys):
    run = tmp_path / "run"
    assert train.main(["--model", "lenet", "--data-dir", str(tiny), "--data-setting", "book",
                       "--max-epochs", "1", "--run-dir", str(run), "--no-progress-bar"]) == 0
    res = read_results(run)
    assert res["dataset_sizes"] == {"train": 48, "val": 12, "test": 12}
    assert res["train/loss_epoch"] > 0 and 0 <= res["train/acc"] <= 1  # the last epoch's
    assert res["val/acc"] == pytest.approx(res["test/acc"])  # the same images, the same weights
    pre = json.loads((run / "export" / "config.json").read_text())["preprocess"]
    assert pre["mean"] == [0.0] and pre["std"] == [1.0]
    import predict  # the export, evaluated on the same split: the run's val accuracy

    assert predict.main(["classify", "--export", str(run / "export"), "--eval", "--data",
                         "fashion_mnist", "--data-dir", str(tiny), "--split", "val",
                         "--data-setting", "book"]) == 0
    assert f"(12 images): {res['val/acc']:.4f}" in capsys.readouterr().out


def _exit_code(argv: list[str]) -> int:
    try:
        return train.main(argv)
    except SystemExit as e:  # argparse's own refusal of a bad choice
        return e.code


@pytest.mark.parametrize("argv, message", [
    (["--data-setting", "paper"], "invalid choice: 'paper'"),
    (["--data.setting=paper"], "data.setting: expected 'split' or 'book', got 'paper'"),
    (["--data-setting", "book", "--val-size", "100"], "val_size 100 does not apply"),
    (["--model", "gru", "--data", "time_machine", "--data-setting", "book"], "setting"),
])
def test_bad_data_settings_are_refused_with_exit_2_and_nothing_written(argv, message, tiny,
                                                                       tmp_path, capsys):
    argv = argv if "--model" in argv else ["--model", "lenet", *argv]
    run = tmp_path / "run"
    assert _exit_code([*argv, "--data-dir", str(tiny), "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err, err  # one sentence
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


# --- d2l 0.17's translation setting -------------------------------------------------------


def test_d2l_017_recipes_are_the_books_values():
    from d2l_lightning.models import get_spec

    for name, epochs in (("seq2seq_gru", 300), ("seq2seq_bahdanau", 250),
                         ("transformer_mt", 200)):
        r = get_spec(name).recipe("d2l-0.17")
        assert (r.optimizer, r.lr, r.batch_size, r.max_epochs, r.gradient_clip_val) == (
            "adam", 0.005, 64, epochs, 1.0), name
        assert r.data_kwargs == {"num_steps": 10, "max_examples": 601, "val_size": 0}
        assert r.model_kwargs["num_hiddens"] == 32 and r.model_kwargs["dropout"] == 0.1
    assert get_spec("transformer_mt").recipe("d2l-0.17").model_kwargs["ffn_num_hiddens"] == 64


def test_val_size_0_trains_on_every_pair_and_validates_on_them(tmp_path):
    from test_seq2seq import write_fra_txt

    from d2l_lightning.datamodules.fra_eng import EngFraDataModule

    write_fra_txt(tmp_path, n=80)
    dm = EngFraDataModule(tmp_path, batch_size=16, num_steps=10, max_examples=61, val_size=0)
    dm.setup()
    assert dm.sizes() == {"train": 61, "val": 61, "test": 61}
    assert dm.split_pairs["train"] == dm.split_pairs["val"] == dm.split_pairs["test"]
    held = EngFraDataModule(tmp_path, batch_size=16, num_steps=10, max_examples=61)
    held.setup()  # the d2l 1.0 default is unchanged: the last fifth validates
    assert held.sizes() == {"train": 49, "val": 12, "test": 12}
    with pytest.raises(DataError, match="val_size 61 does not fit 61 pairs"):
        EngFraDataModule(tmp_path, max_examples=61, val_size=61).setup()


def test_book_017_printed_loss_is_our_token_mean_loss_over_num_steps(tmp_path):
    """d2l 0.17 prints sum(MaskedSoftmaxCELoss) / tokens, where that loss averages a
    sequence's masked token losses over all num_steps positions: ours / num_steps."""
    import torch.nn.functional as F
    from test_seq2seq import write_fra_txt

    from d2l_lightning.datamodules.fra_eng import EngFraDataModule
    from d2l_lightning.lit_models import task_module

    write_fra_txt(tmp_path, n=80)
    dm = EngFraDataModule(tmp_path, batch_size=16, num_steps=10, max_examples=61, val_size=0)
    dm.setup()
    torch.manual_seed(0)
    module = task_module("seq2seq")("seq2seq_gru", **dm.data_info(),
                                    model_kwargs={"embed_size": 8, "num_hiddens": 8})
    batch = dm.train_set
    with torch.no_grad():
        logits, ours, mask = module._loss(batch)
    tgt_out = batch[-1]
    valid_len = mask.sum(1)  # d2l: tokens up to and with <eos>
    per_token = F.cross_entropy(logits.permute(0, 2, 1), tgt_out, reduction="none")
    steps = torch.arange(tgt_out.shape[1])[None] < valid_len[:, None]
    d2l_loss = (per_token * steps).mean(dim=1)  # MaskedSoftmaxCELoss, one value a sequence
    printed = d2l_loss.sum() / valid_len.sum()
    assert float(printed) == pytest.approx(float(ours) / dm.num_steps, rel=1e-5)


# --- the WikiText-2 LSTM's plateau schedule -----------------------------------------------


def reference_lrs(lr: float, val_losses: list[float]) -> list[float]:
    """pytorch/examples word_language_model/main.py: the rate after each epoch."""
    best, out = None, []
    for v in val_losses:
        if not best or v < best:
            best = v
        else:
            lr /= 4.0
        out.append(lr)
    return out


def plateau_lrs(optim: dict, val_losses: list[float]) -> list[float]:
    from torch import nn

    from d2l_lightning.lit_models import TaskModule

    module = TaskModule(**optim)
    module.model = nn.Linear(2, 2)
    sched = module.configure_optimizers()["lr_scheduler"]["scheduler"]
    out = []
    for v in val_losses:
        sched.step(v)
        out.append(sched.optimizer.param_groups[0]["lr"])
    return out


VAL = [6.0, 5.5, 5.6, 5.2, 5.2, 5.1, 5.15, 5.14, 5.0999, 5.0999]  # 5.0999: any gain counts


@pytest.mark.parametrize("recipe", ["wikitext", "medium"])
def test_wikitext_plateau_divides_by_4_after_each_epoch_without_improvement(recipe, tmp_path):
    cfg = config_from_argv(["--model", "lstm", "--recipe", recipe, "--data", "wikitext2",
                                  "--run-dir", str(tmp_path / "r")])
    optim = {k: v for k, v in cfg["optim"].items() if k != "label_smoothing"}
    got = plateau_lrs(optim, VAL)
    assert got == pytest.approx(reference_lrs(20.0, VAL), rel=1e-12)
    assert got == pytest.approx([20, 20, 5, 5, 1.25, 1.25, 0.3125, 0.078125, 0.078125,
                                 0.01953125], rel=1e-12)


def test_default_plateau_is_unchanged_x0_1_after_3_flat_epochs():
    got = plateau_lrs({"lr": 1.0, "scheduler": "plateau"}, [5.0, 5.0, 5.0, 5.0, 4.0, 4.0])
    assert got == pytest.approx([1.0, 1.0, 1.0, 0.1, 0.1, 0.1])


@pytest.mark.parametrize("flag, value", [("--optim.plateau_factor", "1.0"),
                                         ("--optim.plateau_factor", "0"),
                                         ("--optim.plateau_patience", "-1")])
def test_bad_plateau_values_are_refused(flag, value, tmp_path, capsys):
    run = tmp_path / "run"
    assert _exit_code(["--model", "lenet", "--scheduler", "plateau", f"{flag}={value}",
                       "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert flag[2:] in err and not run.exists()
    assert err.count("\n") == 1 and "Traceback" not in err, err


def test_list_shows_the_wikitext_anneal():
    from d2l_lightning.models import get_spec
    from d2l_lightning.models.registry import recipe_summary

    assert "plateau(x0.25,patience=0)" in recipe_summary(get_spec("lstm").recipe("wikitext"))
    assert " plateau " not in recipe_summary(get_spec("lstm").recipe("d2l"))


def test_lenet_d2l_017_recipe_is_the_printed_0779_setting(tiny, tmp_path):
    cfg = config_from_argv(["--model", "lenet", "--recipe", "d2l-0.17", "--data-dir",
                                  str(tiny), "--run-dir", str(tmp_path / "r")])
    assert (cfg["optim"]["lr"], cfg["data"]["batch_size"], cfg["trainer"]["max_epochs"]) == (
        0.9, 256, 10)
    assert cfg["data"]["setting"] == "book"

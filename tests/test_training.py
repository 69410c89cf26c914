"""Training through train.py: every model x dataset, learning, export round trip, faults."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch

from conftest import ROOT, read_results, run_cli
from d2l_lightning.cli import train
from d2l_lightning.datamodules.loader import TensorBatchLoader
from d2l_lightning.lit_models import ImageClassificationTask, load_checkpoint
from d2l_lightning.models import get_spec, load_exported, model_names
from d2l_lightning.training.command_line import config_from_argv

IMAGE_MODELS = model_names("image_classification")
# Models beyond the foundation's are covered by their own issue's tests at a reduced size.
FOUNDATION = ["softmax_regression", "mlp", "lenet", "lenet_bn"]


def train_in_process(data_root: Path, run_dir: Path, *args: str) -> int:
    return train.main([*args, "--data-dir", str(data_root), "--run-dir", str(run_dir),
                       "--no-progress-bar"])


@pytest.mark.parametrize("data", ["mnist", "fashion_mnist"])
@pytest.mark.parametrize("model", FOUNDATION)
def test_fast_dev_run_every_model_and_dataset(data_root, tmp_path, model, data) -> None:
    rc = train_in_process(data_root, tmp_path / "run", "--model", model, "--data", data,
                          "--fast-dev-run")
    assert rc == 0
    results = read_results(tmp_path / "run")
    assert results["model"] == model and results["data"] == data
    assert 0.0 <= results["test/acc"] <= 1.0


def test_fast_dev_run_linear_regression(tmp_path) -> None:
    assert train.main(["--model", "linear_regression", "--fast-dev-run", "--run-dir",
                       str(tmp_path / "run"), "--no-progress-bar"]) == 0


def test_linear_regression_recovers_w_and_b(tmp_path) -> None:
    """The seed notes' Lightning example never learned w; the d2l recipe must recover it."""
    run = tmp_path / "run"
    assert train.main(["--model", "linear_regression", "--run-dir", str(run),
                       "--no-progress-bar"]) == 0
    model, _ = load_exported(run / "export")
    w, b = model.net.weight.detach().flatten(), model.net.bias.detach()
    assert torch.allclose(w, torch.tensor([2.0, -3.4]), atol=0.02), w
    assert abs(b.item() - 4.2) < 0.02, b
    assert read_results(run)["val/loss"] < 1e-3


def test_overfit_one_batch_with_random_labels() -> None:
    torch.manual_seed(0)
    x = torch.randint(0, 256, (32, 28, 28), dtype=torch.uint8)
    y = torch.randint(0, 10, (32,))
    module = ImageClassificationTask("lenet", model_kwargs={"activation": "relu", "pool": "max"},
                             optimizer="adam", lr=3e-3)
    trainer = L.Trainer(max_epochs=8, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    # the same 32 images, 20 times an epoch, in shuffled batches of 32
    trainer.fit(module, train_dataloaders=TensorBatchLoader((x.repeat(20, 1, 1), y.repeat(20)),
                                                            32, shuffle=True))
    assert trainer.callback_metrics["train/acc"] == 1.0
    assert trainer.callback_metrics["train/loss_epoch"] < 0.05


def test_last_checkpoint_is_the_final_state_even_without_improvement(data_root,
                                                                      tmp_path) -> None:
    """With lr 0 the metric never improves after epoch 0; last.ckpt must still be current."""
    run = tmp_path / "run"
    assert train_in_process(data_root, run, "--model", "mlp", "--data", "mnist", "--lr", "0",
                            "--max-epochs", "3", "--no-test") == 0
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == read_results(run)["global_step"] > 0
    assert ckpt["epoch"] == 2
    assert len(list((run / "checkpoints").glob("best-*.ckpt"))) == 1


def test_run_folder_contents_and_results(data_root, tmp_path) -> None:
    run = tmp_path / "run"
    assert train_in_process(data_root, run, "--model", "mlp", "--data", "mnist",
                            "--max-epochs", "2") == 0
    for name in ("config.yaml", "metrics.csv", "results.json", "checkpoints/last.ckpt",
                 "export/config.json", "export/model.safetensors"):
        assert (run / name).is_file(), name
    assert list((run / "checkpoints").glob("best-*.ckpt"))
    res = read_results(run)
    for key in ("val/acc", "val/f1", "test/acc", "test/f1", "test/loss", "train_time_sec"):
        assert key in res
    assert res["epochs"] == 2 and res["train_samples_per_sec"] > 0
    assert res["test/acc"] > 0.5  # the fixture classes are easy
    assert len(res["test/confusion_matrix"]) == 10
    assert sum(map(sum, res["test/confusion_matrix"])) == 60
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/loss", "train/acc", "val/acc", "test/acc"} <= set(header)


# runs a script with Lightning and torchmetrics made unimportable
WITHOUT_LIGHTNING = str(ROOT / "tests" / "without_lightning.py")


def test_export_round_trip_without_lightning(data_root, tmp_path) -> None:
    """Each foundation model's export, read in one process that cannot import Lightning."""
    images = torch.randint(0, 256, (8, 28, 28), dtype=torch.uint8)
    torch.save(images, tmp_path / "images.pt")
    expected = {}
    for model in FOUNDATION:
        run = tmp_path / model
        assert train_in_process(data_root, run, "--model", model, "--data", "fashion_mnist",
                                "--max-epochs", "1", "--limit-train-batches", "3",
                                "--no-test") == 0
        module = load_checkpoint(run / "checkpoints" / "last.ckpt").eval()
        with torch.no_grad():
            expected[model] = module(module.on_after_batch_transfer((images, None), 0)[0])
    script = tmp_path / "check.py"
    script.write_text(
        "import sys\n"
        "import torch\n"
        "from d2l_lightning.models import load_exported, preprocess_images\n"
        f"x = torch.load({str(tmp_path / 'images.pt')!r})\n"
        f"for model in {FOUNDATION!r}:\n"
        f"    export = {str(tmp_path)!r} + '/' + model + '/export'\n"
        "    net, cfg = load_exported(export)\n"
        "    with torch.no_grad():\n"
        "        logits = net(preprocess_images(x, **{k: cfg['preprocess'][k] for k in "
        "('mean', 'std', 'resize')}))\n"
        f"    torch.save(logits, {str(tmp_path)!r} + '/' + model + '.pt')\n"
        "assert 'lightning' not in sys.modules or sys.modules['lightning'] is None\n"
    )
    run_cli(WITHOUT_LIGHTNING, str(script), check=True)
    for model in FOUNDATION:
        run = tmp_path / model
        got = torch.load(tmp_path / f"{model}.pt")
        assert torch.allclose(got, expected[model], atol=1e-6), model
        cfg = json.loads((run / "export" / "config.json").read_text())
        assert cfg["arch"] == model and len(cfg["class_names"]) == 10
        assert cfg["preprocess"]["mean"] == [0.286]
        state = load_exported(run / "export")[0].state_dict()
        assert not any(k.startswith(("model.", "_orig_mod")) for k in state)  # no prefix


def test_predict_cli_matches_test_accuracy_and_labels_files(data_root, tmp_path) -> None:
    run = tmp_path / "run"
    assert train_in_process(data_root, run, "--model", "lenet", "--recipe", "modern",
                            "--data", "fashion_mnist", "--max-epochs", "2") == 0
    export = str(run / "export")
    predict = str(ROOT / "predict.py")
    proc = run_cli(WITHOUT_LIGHTNING, predict, "classify", "--export", export, "--eval", "--data",
                   "fashion_mnist", "--split", "test", "--data-dir", str(data_root), check=True)
    acc = float(proc.stdout.strip().rsplit(" ", 1)[-1])
    assert abs(acc - read_results(run)["test/acc"]) < 1e-4
    # PNG input (any size, resized to 28x28) and IDX input, top-k labels
    from torchvision.io import write_png

    png = tmp_path / "img.png"
    write_png(torch.randint(0, 255, (1, 56, 56), dtype=torch.uint8), str(png))
    idx = data_root / "fashion-mnist" / "t10k-images-idx3-ubyte"
    proc = run_cli(WITHOUT_LIGHTNING, predict, "classify", "--export", export, str(png), str(idx),
                   "--limit", "3", "--top-k", "2", check=True)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 3 and lines[0].startswith(str(png)) and lines[1].endswith(")")
    assert lines[1].count("(") == 2


def test_non_finite_loss_stops_with_a_message(tmp_path) -> None:
    proc = run_cli("train.py", "--model", "linear_regression", "--lr", "1e6", "--run-dir",
                   str(tmp_path / "run"), "--no-progress-bar")
    assert proc.returncode == 1
    assert "loss became" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "results.json").exists()


def test_recipe_fills_unset_flags_and_flags_override() -> None:
    cfg = config_from_argv(["--model", "lenet"])
    d2l = get_spec("lenet").recipe("d2l")
    assert (cfg["optim"]["lr"], cfg["data"]["batch_size"], cfg["optim"]["optimizer"]) == (
        d2l.lr, d2l.batch_size, "sgd")
    cfg = config_from_argv(["--model", "lenet", "--recipe", "modern", "--lr", "0.5"])
    assert cfg["optim"]["lr"] == 0.5 and cfg["optim"]["optimizer"] == "adamw"
    assert (cfg["model"]["activation"], cfg["model"]["pool"]) == ("relu", "max")


def test_checkpoints_of_the_flat_config_era_still_load(tmp_path) -> None:
    """Hyper-parameters renamed or dropped since (src_len, compile, gradient_clip_val)."""
    from d2l_lightning.lit_models import TranslationTask

    vocab = ["<unk>", "<pad>", "<bos>", "<eos>", "a", "b"]
    module = TranslationTask("seq2seq_gru", src_vocab=vocab, tgt_vocab=vocab, num_steps=7,
                     model_kwargs={"embed_size": 4, "num_hiddens": 8, "num_layers": 1})
    hparams = dict(module.hparams)
    hparams["src_len"] = hparams.pop("num_steps")
    hparams["compile"] = False
    hparams["gradient_clip_val"] = 1.0  # a Trainer argument since 2026-12
    torch.save({"hyper_parameters": hparams, "state_dict": module.state_dict()},
               tmp_path / "old.ckpt")
    loaded = load_checkpoint(tmp_path / "old.ckpt")
    assert loaded.hparams.num_steps == 7 and "compile" not in loaded.hparams
    assert "gradient_clip_val" not in loaded.hparams
    for k, v in module.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])


@pytest.mark.parametrize("clip", [1e-3, None])
def test_gradient_norm_is_clipped_by_the_trainer_argument(clip) -> None:
    """One SGD step with lr 1 moves the weights by exactly the clipped gradient norm."""
    torch.manual_seed(0)
    x = torch.randint(0, 256, (32, 28, 28), dtype=torch.uint8)
    y = torch.randint(0, 10, (32,))
    module = ImageClassificationTask("mlp", lr=1.0)
    before = [p.detach().clone() for p in module.parameters()]
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        gradient_clip_val=clip)
    trainer.fit(module, train_dataloaders=TensorBatchLoader((x, y), 32))
    moved = torch.sqrt(sum(((p.detach() - b) ** 2).sum()
                           for p, b in zip(module.parameters(), before)))
    if clip is None:
        assert moved > 0.01
    else:
        assert moved == pytest.approx(clip, rel=1e-3)

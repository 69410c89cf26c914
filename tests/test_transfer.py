"""Transfer learning (d2l §14.2): initial weights, head replacement, freezing, lr factors, the
image-folder DataModule and its cache, and fine-tune -> export -> predict without Lightning."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import call, make_idx_dataset, read_results, run_cli
from d2l_lightning.cli import train
from d2l_lightning.datamodules.download import DataError
from d2l_lightning.datamodules.folder import CACHE_DIR, load_folder
from d2l_lightning.lit_models import ImageClassificationTask
from d2l_lightning.models import build_model
from d2l_lightning.models.transfer import (
    TransferError,
    apply_initial_weights,
    freeze,
    head_prefix,
    map_torchvision_resnet,
    param_groups,
    read_source,
)
from d2l_lightning.training.command_line import config_from_argv

PIL = pytest.importorskip("PIL.Image")


def write_image(path: Path, array: np.ndarray) -> Path:
    """A PNG or JPEG (by suffix) of a ``(H, W)`` grey or ``(H, W, 3)`` RGB uint8 array."""
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.fromarray(array.astype(np.uint8)).save(path)
    return path


def make_folder(root: Path, n: int = 12, size: int = 28, seed: int = 0) -> Path:
    """Two learnable classes ('zebra' bright left half, 'ant' bright right half): PNG + JPEG,
    grey-scale + RGB, in train/ only."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        for name, half in (("zebra", 0), ("ant", 1)):
            img = rng.integers(0, 40, size=(size, size))
            img[:, half * size // 2:(half + 1) * size // 2] += 200
            if i % 2:  # RGB JPEG
                write_image(root / "train" / name / f"{i}.jpg",
                            np.repeat(img[..., None], 3, axis=2).clip(0, 255))
            else:
                write_image(root / "train" / name / f"{i}.png", img.clip(0, 255))
    return root


# ------------------------------------------------------------------ initial weights


def test_torchvision_resnet_keys_map_exactly() -> None:
    """torchvision's ResNet-18 state dict (random, with BN statistics) gives our ResNet-18 the
    same function in eval mode: stem, blocks, folded downsample BN and fc."""
    tv_models = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    tv = tv_models.resnet18(weights=None, num_classes=7)
    for m in tv.modules():
        if isinstance(m, nn.BatchNorm2d):  # non-trivial statistics and affine parameters
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    ours = build_model("resnet18", num_classes=7, in_channels=3)
    report = apply_initial_weights(ours, map_torchvision_resnet(tv.state_dict()), "tv")
    assert report["new"] == [] and len(report["loaded"]) == len(ours.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), tv.eval()(x), atol=1e-4, rtol=1e-4)


def test_head_is_new_when_classes_differ_and_other_shapes_are_refused() -> None:
    src = build_model("lenet_bn", num_classes=10)
    dst = build_model("lenet_bn", num_classes=2)
    head = head_prefix(dst)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    report = apply_initial_weights(dst, src.state_dict(), "src")
    assert report["new"] == [f"{head}.weight", f"{head}.bias"]
    for key, value in dst.state_dict().items():
        expected = before[key] if key in report["new"] else src.state_dict()[key]
        assert torch.equal(value, expected), key
    # same classes: the head is loaded unless a new one is asked for
    same = build_model("lenet_bn", num_classes=10)
    assert apply_initial_weights(same, src.state_dict(), "src")["new"] == []
    assert len(apply_initial_weights(same, src.state_dict(), "src", new_head=True)["new"]) == 2
    rgb = build_model("lenet_bn", num_classes=2, in_channels=3)  # first conv differs: refused
    with pytest.raises(TransferError, match="not the head"):
        apply_initial_weights(rgb, src.state_dict(), "src")


def test_another_task_family_is_refused(tmp_path) -> None:
    from d2l_lightning.models import save_export

    lm = build_model("gru", vocab_size=30)
    save_export(lm, {"arch": "gru", "model_kwargs": {"vocab_size": 30},
                     "task": "language_modeling"}, tmp_path / "export")
    with pytest.raises(TransferError, match="'language_modeling' model, which cannot"):
        read_source(str(tmp_path / "export"), "image_classification")


def test_missing_torchvision_weights_name_the_file(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(TransferError, match=r"place resnet18-f37072fd\.pth .* in .*checkpoints"):
        read_source("torchvision:resnet18", "image_classification")
    with pytest.raises(TransferError, match="96/256/384"):
        read_source("torchvision:alexnet", "image_classification")


# ------------------------------------------------------------------ freezing, lr factors


def test_frozen_parameters_and_batch_norm_statistics_do_not_change() -> None:
    torch.manual_seed(0)
    module = ImageClassificationTask("lenet_bn", num_classes=3, freeze=["backbone"], lr=0.5)
    head = head_prefix(module.model)
    params = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    buffers = {n: b.clone() for n, b in module.model.named_buffers()}
    opt = module.configure_optimizers()
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {
        id(p) for n, p in module.model.named_parameters() if n.startswith(head + ".")}
    module.train()
    assert not any(m.training for m in module.model.modules() if isinstance(m, nn.BatchNorm2d))
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 3, (8,))
    nn.functional.cross_entropy(module(x), y).backward()
    opt.step()
    for n, p in module.model.named_parameters():
        assert torch.equal(p, params[n]) != n.startswith(head + "."), n
    for n, b in module.model.named_buffers():  # running statistics of frozen BN: unchanged
        assert torch.equal(b, buffers[n]), n


def test_lr_mult_reaches_the_param_groups() -> None:
    module = ImageClassificationTask("lenet", num_classes=3, lr=0.5,
                                     lr_mult={"backbone": 0.1, "net.0": 0.0})
    opt = module.configure_optimizers()
    head = head_prefix(module.model)
    by_lr = {round(g["lr"], 6): {id(p) for p in g["params"]} for g in opt.param_groups}
    named = dict(module.model.named_parameters())
    assert by_lr[0.5] == {id(named[f"{head}.weight"]), id(named[f"{head}.bias"])}
    assert by_lr[0.0] == {id(named["net.0.weight"]), id(named["net.0.bias"])}  # longest prefix
    assert len(by_lr[0.05]) == len(named) - 4
    with pytest.raises(TransferError, match="matches no parameter"):
        param_groups(module.model, 0.5, {"features": 0.1})
    with pytest.raises(TransferError, match="matches no parameter"):
        freeze(module.model, ["net.99"])


# ------------------------------------------------------------------ image folders


def test_folder_datamodule_on_png_and_jpeg_grey_and_rgb(tmp_path) -> None:
    from d2l_lightning.datamodules.image_folder import ImageFolderDataModule

    root = make_folder(tmp_path / "pets")
    dm = ImageFolderDataModule(data_dir=str(root), batch_size=5, val_size=4)
    dm.prepare_data()
    info = dm.data_info()
    assert info["class_names"] == ["ant", "zebra"]  # sorted, not creation order
    assert info["in_channels"] == 3 and info["image_size"] == 28 and info["augment"] == 0.25
    dm.setup()
    assert dm.sizes() == {"train": 20, "val": 4, "test": 4} and dm.test_is_val
    x, y = next(iter(dm.train_dataloader()))
    assert x.dtype == torch.uint8 and x.shape == (5, 3, 28, 28) and y.dtype == torch.int64
    images, labels = load_folder(root).split("train")
    for image, label in zip(images, labels):  # 'ant' (label 0) is bright on the right
        right = image[:, :, 14:].mean() > image[:, :, :14].mean()
        assert right == (label == 0)
    grey = make_folder(tmp_path / "grey", n=2)
    for p in (grey / "train").rglob("*.jpg"):
        p.unlink()
    assert load_folder(grey).images.shape[1] == 1


def test_cache_is_built_once_and_rebuilt_when_a_file_changes(tmp_path) -> None:
    root = make_folder(tmp_path / "pets", n=2)
    first = load_folder(root)
    assert first.built and load_folder(root).built is False  # reused
    img = root / "train" / "ant" / "0.png"
    write_image(img, np.full((28, 28), 7))
    second = load_folder(root)
    assert second.built and second.path != first.path and not first.path.exists()
    assert (second.images == 7).all(axis=(1, 2, 3)).any()  # the changed image is in the cache
    assert len(list((root / CACHE_DIR).iterdir())) == 1
    st = img.stat()  # same bytes, a new modification time (an edit of the same size): rebuilt
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert load_folder(root).built


@pytest.mark.parametrize("make, needle", [
    (lambda r: r.mkdir(), "has no train/ folder"),
    (lambda r: (r / "train").mkdir(parents=True), "holds no class folders"),
    (lambda r: (make_folder(r, n=1), (r / "train" / "cat").mkdir()), "holds no PNG or JPEG"),
])
def test_bad_folders_are_one_sentence_and_write_nothing(tmp_path, make, needle) -> None:
    root = tmp_path / "bad"
    make(root)
    with pytest.raises(DataError, match=needle):
        load_folder(root)
    assert not (root / CACHE_DIR).exists()


def test_corrupt_and_non_image_files_are_skipped_with_one_warning(tmp_path, capsys) -> None:
    root = make_folder(tmp_path / "pets", n=2)
    (root / "train" / "ant" / "broken.png").write_bytes(b"not a png")
    (root / "train" / "ant" / "notes.txt").write_text("hi")
    write_image(root / "train" / "zebra" / "big.png", np.zeros((40, 56)))  # mixed size
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cache = load_folder(root)
    assert len(caught) == 1 and "skipped 2 file(s)" in str(caught[0].message)
    assert "broken.png" in str(caught[0].message) and "notes.txt" in str(caught[0].message)
    assert cache.images.shape == (5, 3, 28, 28)
    assert "1 image(s) not 28x28 were resized" in capsys.readouterr().out


# ------------------------------------------------------------------ the CLI, end to end


@pytest.fixture(scope="module")
def source_export(tmp_path_factory) -> Path:
    """A LeNet-BN 'pretrained' on a tiny Fashion-MNIST-format fixture, exported by train.py."""
    root = tmp_path_factory.mktemp("src")
    make_idx_dataset(root / "fashion-mnist", n_train=120, n_test=20, seed=3)
    run = root / "run"
    assert train.main(["--model", "lenet_bn", "--data", "fashion_mnist", "--data-dir",
                       str(root), "--max-steps", "4", "--batch-size", "32", "--run-dir",
                       str(run), "--no-progress-bar", "--no-test"]) == 0
    return run / "export"


def test_fine_tune_on_a_folder_then_export_and_predict_without_lightning(
        tmp_path, source_export, capsys) -> None:
    root = make_folder(tmp_path / "pets")
    for p in (root / "train").rglob("*.jpg"):  # grey-scale, as the source
        p.unlink()
    run = tmp_path / "ft"
    argv = ["--model", "lenet_bn", "--data", "image_folder", "--data-dir", str(root),
            "--init-from", str(source_export), "--freeze", "net.0", "net.1",
            "--lr-mult", "backbone=0.1", "--max-steps", "4", "--batch-size", "4",
            "--val-size", "4", "--run-dir", str(run), "--no-progress-bar"]
    assert train.main(argv) == 0
    out = capsys.readouterr().out
    assert "loaded 28 tensors; new (head): net.15.weight, net.15.bias" in out
    assert "frozen parameters; 1 frozen batch-norm layers stay in eval mode" in out
    src = torch.load(next((run / "checkpoints").glob("last.ckpt")), weights_only=True)
    from safetensors.torch import load_file

    pre = load_file(str(source_export / "model.safetensors"))
    assert torch.equal(src["state_dict"]["model.net.0.weight"], pre["net.0.weight"])  # frozen
    assert not torch.equal(src["state_dict"]["model.net.4.weight"], pre["net.4.weight"])
    assert read_results(run)["dataset_sizes"] == {"train": 8, "val": 4, "test": 4}
    # replay from config.yaml reproduces every transfer setting
    cfg = config_from_argv(["--config", str(run / "config.yaml")])
    assert cfg["task"]["init_from"] == str(source_export)
    assert cfg["task"]["freeze"] == ["net.0", "net.1"] and cfg["optim"]["lr_mult"] == {
        "backbone": 0.1}
    # predict.py without Lightning, with the folder's class names
    images = sorted((root / "train").rglob("*.png"))[:2]
    proc = run_cli("tests/without_lightning.py", "predict.py", "classify", "--export",
                   str(run / "export"), *map(str, images), "--top-k", "2", check=True)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2 and all(("ant (" in ln and "zebra (" in ln) for ln in lines)


@pytest.mark.parametrize("extra, needle", [
    (["--freeze", "features"], "--freeze prefix 'features' matches no parameter"),
    (["--lr-mult", "features=0.1"], "--lr-mult prefix 'features' matches no parameter"),
    (["--init-from", "LM"], "holds a 'language_modeling' model, which cannot initialise"),
    (["--init-from", "RGB"], "has shape (6, 3, 5, 5) there but (6, 1, 5, 5) here"),
    (["--lr-mult", "backbone"], "expected PREFIX=FACTOR"),
])
def test_bad_transfer_flags_exit_2_with_one_sentence_and_write_nothing(
        tmp_path, source_export, extra, needle, capsys) -> None:
    from d2l_lightning.models import save_export

    if "LM" in extra:
        save_export(build_model("gru", vocab_size=30), {
            "arch": "gru", "model_kwargs": {"vocab_size": 30}, "task": "language_modeling"},
            tmp_path / "lm")
    if "RGB" in extra:
        save_export(build_model("lenet_bn", in_channels=3), {
            "arch": "lenet_bn", "model_kwargs": {"in_channels": 3},
            "task": "image_classification"}, tmp_path / "rgb")
    extra = [{"LM": str(tmp_path / "lm"), "RGB": str(tmp_path / "rgb")}.get(a, a) for a in extra]
    root = make_folder(tmp_path / "pets", n=2)
    for p in (root / "train").rglob("*.jpg"):
        p.unlink()
    before = sorted(tmp_path.rglob("*"))  # the folder's cache included
    code, _, err = call(train.main, "--model", "lenet_bn", "--data", "image_folder",
                        "--data-dir", root, "--init-from", source_export, "--run-dir",
                        tmp_path / "run", *extra, capsys=capsys)
    assert code == 2, err
    assert needle in err and len(err.strip().splitlines()) == 1, err
    assert sorted(tmp_path.rglob("*")) == before


def test_torchvision_init_repeats_grey_to_rgb_with_imagenet_statistics(tmp_path,
                                                                       monkeypatch) -> None:
    """A cached torchvision file (here a random one in a temporary TORCH_HOME) initialises a
    3-channel ResNet-18 for 1-channel data: ImageNet mean/std, grey batches repeated, and the
    export tells predict.py to do the same."""
    tv_models = pytest.importorskip("torchvision.models")
    from d2l_lightning.cli import predict
    from d2l_lightning.models.transfer import IMAGENET_MEAN, torchvision_cache_file

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(0)
    tv = tv_models.resnet18(weights=None)
    path = torchvision_cache_file("resnet18")
    path.parent.mkdir(parents=True)
    torch.save(tv.state_dict(), path)
    module = ImageClassificationTask("resnet18", num_classes=2, in_channels=1, image_size=32,
                                     init_from="torchvision:resnet18", freeze=["backbone"])
    assert "loaded 125 tensors; new (head): net.last.2.weight" in module.load_initial_weights()
    assert torch.equal(module.model.net[0][0].weight, tv.conv1.weight)
    grey = torch.randint(0, 256, (4, 1, 32, 32), dtype=torch.uint8)
    x, _ = module.on_after_batch_transfer((grey, torch.zeros(4)), 0)
    assert x.shape == (4, 3, 32, 32)
    scaled = grey.float() / 255  # each channel normalised with ImageNet's own statistics
    torch.testing.assert_close(x[:, 0:1], (scaled - IMAGENET_MEAN[0]) / 0.229)
    config = module.export_config()
    assert config["preprocess"]["channels"] == 3 and config["preprocess"]["mean"] == list(
        IMAGENET_MEAN)
    module.eval()
    logits = predict.classify_logits(module.model, config, grey)
    with torch.no_grad():
        torch.testing.assert_close(logits, module.model(x))


def test_train_and_eval_views_have_the_same_size() -> None:
    from d2l_lightning.models.preprocess import preprocess_images

    torch.manual_seed(0)
    x = torch.randint(0, 256, (6, 3, 20, 20), dtype=torch.uint8)
    train_view = preprocess_images(x, [0.5] * 3, [0.5] * 3, random_crop=0.25)
    eval_view = preprocess_images(x, [0.5] * 3, [0.5] * 3, center_crop=0.875)
    plain = preprocess_images(x, [0.5] * 3, [0.5] * 3)
    assert train_view.shape == eval_view.shape == plain.shape == (6, 3, 20, 20)
    assert not torch.allclose(train_view, plain) and not torch.allclose(eval_view, plain)
    again = preprocess_images(x, [0.5] * 3, [0.5] * 3, center_crop=0.875)
    assert torch.equal(eval_view, again)  # evaluation is deterministic
    full = preprocess_images(x, [0.5] * 3, [0.5] * 3, center_crop=1.0)
    torch.testing.assert_close(full, plain, atol=1e-5, rtol=0)  # the identity box


def test_a_checkpoint_initialises_like_its_export(source_export) -> None:
    from safetensors.torch import load_file

    ckpt = source_export.parent / "checkpoints" / "last.ckpt"
    state, arch = read_source(str(ckpt), "image_classification")
    exported = load_file(str(source_export / "model.safetensors"))
    assert arch == "lenet_bn" and state.keys() == exported.keys()
    assert all(torch.equal(state[k], exported[k]) for k in state)
    with pytest.raises(TransferError, match="neither an export folder"):
        read_source(str(source_export / "missing"), "image_classification")

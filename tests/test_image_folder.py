"""Folder-per-class image data (d2l §14.2) as properties: the class order and label mapping, the
train/val split, when the cache is rebuilt, the normalisation statistics, and
grey versus colour images. Tiny PNGs written in each test; everything in-process."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from d2l_lightning.datamodules.download import DataError
from d2l_lightning.datamodules.folder import (
    CACHE_DIR,
    FolderCache,
    _intact,
    folder_splits,
    load_folder,
    scan_folder,
)
from d2l_lightning.datamodules.idx import split_indices
from d2l_lightning.datamodules.image_folder import ImageFolderDataModule

Image = pytest.importorskip("PIL.Image")


def png(path: Path, pixels, side: int = 2) -> Path:
    """A PNG of ``pixels``: an int (grey), an RGB triple (constant colour) or an array."""
    arr = np.asarray(pixels, dtype=np.uint8)
    if arr.ndim == 0 or arr.shape == (3,):
        arr = np.broadcast_to(arr, (side, side, *arr.shape))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(arr)).save(path)
    return path


def tree(root: Path, spec: dict[str, dict[str, list]]) -> Path:
    """``{split: {class: [pixels of each image]}}`` as ``root/split/class/i.png``."""
    for split, classes in spec.items():
        for name, images in classes.items():
            for i, pixels in enumerate(images):
                png(root / split / name / f"{i}.png", pixels)
    return root


def by_value(cache: FolderCache, split: str = "train") -> dict[int, int]:
    """``{first pixel value: label}`` of a split's cached images."""
    images, labels = cache.split(split)
    return {int(x.flat[0]): int(y) for x, y in zip(images, labels)}


# ------------------------------------------------------------------ class order and labels


@pytest.mark.parametrize("listing", ["as listed", "reversed"])
def test_image_folder_labels_follow_sorted_class_names_whatever_the_listing_order(
        tmp_path, monkeypatch, listing) -> None:
    root = tmp_path / "pets"
    for name, value in (("zebra", 30), ("ant", 10), ("mole", 20)):  # not created in order
        png(root / "train" / name / "a.png", value)
        png(root / "train" / name / "b.png", value + 1)
    if listing == "reversed":
        iterdir = Path.iterdir
        monkeypatch.setattr(Path, "iterdir", lambda p: iter(sorted(iterdir(p), reverse=True)))
    cache = load_folder(root)
    assert cache.classes == ["ant", "mole", "zebra"]
    assert by_value(cache) == {10: 0, 11: 0, 20: 1, 21: 1, 30: 2, 31: 2}


def test_image_folder_label_mapping_follows_an_added_class_and_a_partial_val(tmp_path) -> None:
    root = tree(tmp_path / "pets", {"train": {"zebra": [30], "ant": [10]}})
    assert by_value(load_folder(root)) == {10: 0, 30: 1}
    tree(root, {"train": {"bee": [20]}, "val": {"zebra": [35]}})  # val/ lacks 'ant' and 'bee'
    cache = load_folder(root)
    assert cache.built and cache.classes == ["ant", "bee", "zebra"]
    assert by_value(cache) == {10: 0, 20: 1, 30: 2}
    assert by_value(cache, "val") == {35: 2}  # train/'s label for zebra, not val/'s position


def test_image_folder_scan_skips_hidden_entries_and_lists_non_images(tmp_path) -> None:
    root = tree(tmp_path / "pets", {"train": {"ant": [1], "bee": [2]}, "val": {"bee": [6]}})
    for split in ("train", "val"):
        png(root / split / ".ipynb_checkpoints" / "x.png", 3)  # hidden folder: not a class
        (root / split / "README.txt").write_text("a file beside the classes: not a class")
    png(root / "train" / "ant" / ".hidden.png", 4)  # hidden file: not an image, not reported
    (root / "train" / "bee" / "notes.txt").write_text("hi")
    png(root / "train" / "bee" / "upper.PNG", 5)  # suffixes in any case
    (root / "train" / "bee" / "folder.png").mkdir()  # a folder named like an image: neither
    scan = scan_folder(root)
    assert scan.classes == ["ant", "bee"]
    assert [(p.name, y) for p, y in scan.files["train"]] == [("0.png", 0), ("0.png", 1),
                                                             ("upper.PNG", 1)]
    assert [(p.name, y) for p, y in scan.files["val"]] == [("0.png", 1)]
    assert [p.name for p in scan.ignored] == ["notes.txt"]


def _refusal(root: Path, spec: dict) -> Path:
    tree(root, spec)
    for split in spec:
        (root / split).mkdir(parents=True, exist_ok=True)
    return root


@pytest.mark.parametrize("make, message", [
    (lambda r: (r.parent.mkdir(), r.write_text("x")),
     "image folder {r} is a file, not a folder: point --data-dir at the folder that holds "
     "train/<class>/"),
    (lambda r: None, "image folder {r} does not exist"),
    (lambda r: _refusal(r, {"val": {"ant": [1]}}),
     "image folder {r} has no train/ folder (expected {r}/train/<class>/*.png|jpg, and "
     "optionally val/ and test/)"),
    (lambda r: _refusal(r, {"train": {}}),
     "{r}/train holds no class folders (expected {r}/train/<class>/*.png|jpg)"),
    (lambda r: _refusal(r, {"train": {"bee": [2]}}),
     "{r}/train holds one class folder ('bee'), and a classifier needs at least two classes: "
     "add a folder of images per class"),
    (lambda r: _refusal(r, {"train": {"ant": [1], "bee": [2]}, "val": {"yak": [3], "cow": [4]}}),
     "{r}/val has class folder 'cow', which train/ lacks"),
    (lambda r: (_refusal(r, {"train": {"ant": [1], "bee": [2]}}), (r / "val" / "bee").mkdir(
        parents=True)), "class folder {r}/val/bee holds no PNG or JPEG image"),
    (lambda r: _refusal(r, {"train": {"ant": [1], "bee": [2]}, "test": {}}),
     "{r}/test holds no class folders with images"),
], ids=["a-file", "missing", "no-train", "no-classes", "one-class", "unknown-class",
        "empty-class", "empty-split"])
def test_image_folder_bad_class_folders_are_refused_in_one_sentence(tmp_path, make,
                                                                    message) -> None:
    root = tmp_path / "d" / "pets"
    make(root)
    with pytest.raises(DataError) as e:
        scan_folder(root)
    assert str(e.value) == message.format(r=root)


# ------------------------------------------------------------------ the train/val split


def hand_cache(n: int, splits: dict[str, tuple[int, int]] | None = None) -> FolderCache:
    """``n`` 1x1 grey images whose value is their index (mod 256); label ``index % 3``.

    Kept, as for a read-only folder, in the user's cache folder, not in ``pets/``.
    """
    images = (np.arange(n) % 256).astype(np.uint8).reshape(n, 1, 1, 1)
    labels = (np.arange(n) % 256 % 3).astype(np.int64)
    return FolderCache(images, labels, splits or {"train": (0, n)}, ["a", "b", "c"],
                       Path("xdg/d2l-lightning/folders/abc") / ("0" * 16), built=True,
                       root=Path("pets"))


def values(pair: tuple[torch.Tensor, torch.Tensor]) -> list[int]:
    images, labels = pair
    assert (labels == images.flatten().long() % 3).all()  # each image keeps its label
    return images.flatten().tolist()


@pytest.mark.parametrize("n, val_size, n_val", [
    (2, None, 1), (12, None, 1), (18, None, 2), (24, None, 2), (42, None, 4),  # 1/12, at least 1
    (5, 1, 1), (5, 4, 4),  # the boundaries: one image validates, one trains
])
def test_image_folder_split_sizes_disjoint_every_image_once_and_seeded(n, val_size,
                                                                       n_val) -> None:
    cache = hand_cache(n)
    splits, test_is_val = folder_splits(cache, seed=3, val_size=val_size)
    train, val = values(splits["train"]), values(splits["val"])
    assert (len(train), len(val)) == (n - n_val, n_val)
    assert sorted(train + val) == list(range(n))  # disjoint, every image once
    assert test_is_val and splits["test"] is splits["val"]
    assert val == split_indices(n, n_val, 3)[1].tolist()  # the seeded split of idx.py
    again, _ = folder_splits(cache, seed=3, val_size=val_size)
    assert values(again["val"]) == val and values(again["train"]) == train


def test_image_folder_split_defaults_are_seed_0_and_a_twelfth() -> None:
    splits, _ = folder_splits(hand_cache(24))
    assert values(splits["val"]) == split_indices(24, 2, 0)[1].tolist()
    assert len(values(splits["train"])) == 22


def test_image_folder_split_depends_on_the_seed() -> None:
    cache = hand_cache(24)
    vals = {s: values(folder_splits(cache, seed=s, val_size=12)[0]["val"]) for s in (0, 1)}
    assert vals[0] != vals[1] and len(vals[0]) == len(vals[1]) == 12


@pytest.mark.parametrize("n, val_size, message", [
    (1, None, "pets/train needs at least 2 images to hold out a validation split (or add val/)"),
    (5, 5, "validation size 5 must be between 1 and 4"),
])
def test_image_folder_split_too_small_is_refused(n, val_size, message) -> None:
    with pytest.raises(DataError) as e:
        folder_splits(hand_cache(n), val_size=val_size)
    assert str(e.value) == message


def test_image_folder_val_and_test_folders_are_the_val_and_test_splits() -> None:
    cache = hand_cache(9, {"train": (0, 5), "val": (5, 7), "test": (7, 9)})
    splits, test_is_val = folder_splits(cache, seed=0, val_size=None)
    assert [values(splits[s]) for s in ("train", "val", "test")] == [[0, 1, 2, 3, 4], [5, 6],
                                                                      [7, 8]]
    assert not test_is_val
    splits, test_is_val = folder_splits(hand_cache(7, {"train": (0, 5), "val": (5, 7)}))
    assert values(splits["train"]) == [0, 1, 2, 3, 4] and test_is_val
    assert splits["test"] is splits["val"] and values(splits["val"]) == [5, 6]


def test_image_folder_train_fraction_is_a_seeded_subset_of_the_training_split() -> None:
    cache = hand_cache(24)
    full = values(folder_splits(cache, seed=5, val_size=2)[0]["train"])
    half = values(folder_splits(cache, seed=5, val_size=2, train_fraction=0.5)[0]["train"])
    assert len(full) == 22 and len(half) == 11 and set(half) < set(full)
    assert half == values(folder_splits(cache, seed=5, val_size=2, train_fraction=0.5)[0]["train"])


# ------------------------------------------------------------------ the cache


def _size_only(root: Path) -> None:
    path = root / "train" / "ant" / "0.png"
    st = path.stat()
    png(path, np.arange(9, dtype=np.uint8).reshape(3, 3))  # other bytes, another length
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # the same modification time
    assert path.stat().st_size != st.st_size


def _mtime_only(root: Path) -> None:
    path = root / "train" / "ant" / "0.png"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1000))  # 1 microsecond later


@pytest.mark.parametrize("change", [
    _size_only,
    _mtime_only,
    lambda r: png(r / "train" / "bee" / "1.png", 9),  # an added file
    lambda r: (r / "train" / "bee" / "0.png").unlink(),  # a removed file (bee keeps one)
    lambda r: png(r / "train" / "cow" / "0.png", 9),  # an added class
    lambda r: (r / "train" / "bee").rename(r / "train" / "bat"),  # a renamed class
    lambda r: png(r / "test" / "ant" / "0.png", 9),  # another split
], ids=["size-only", "mtime-only", "added-file", "removed-file", "added-class",
        "renamed-class", "added-split"])
def test_image_folder_cache_is_rebuilt_when_the_tree_changes(tmp_path, change) -> None:
    root = tree(tmp_path / "pets", {"train": {"ant": [1], "bee": [2, 3]}})
    first = load_folder(root)
    before = scan_folder(root).fingerprint(None, None)
    assert len(before) == 16 and int(before, 16) >= 0  # 16 hex digits name the cache folder
    assert first.path == root / CACHE_DIR / before
    change(root)
    after = scan_folder(root).fingerprint(None, None)
    again = load_folder(root)
    assert after != before and again.built and again.path == root / CACHE_DIR / after
    assert [p.name for p in (root / CACHE_DIR).iterdir()] == [after]  # the old one removed


def test_image_folder_cache_of_an_unchanged_tree_is_reused(tmp_path) -> None:
    root = tree(tmp_path / "pets", {"train": {"ant": [1], "bee": [2]}, "val": {"bee": [3]}})
    first = load_folder(root)
    (root / "train" / "ant" / "notes.txt").write_text("not an image")  # not part of the data
    again = load_folder(root)
    assert first.built and not again.built and again.path == first.path
    assert np.array_equal(again.images, first.images) and again.splits == {"train": (0, 2),
                                                                           "val": (2, 3)}


def test_image_folder_fingerprint_covers_the_decoding_settings(tmp_path) -> None:
    scan = scan_folder(tree(tmp_path / "pets", {"train": {"ant": [1], "bee": [2]}}))
    prints = {(s, c): scan.fingerprint(s, c) for s in (None, 2, 3) for c in (None, 1, 3)}
    assert len(set(prints.values())) == 9
    assert scan.fingerprint(2, 1) == scan_folder(scan.root).fingerprint(2, 1)


def test_image_folder_intact_cache_is_told_from_a_damaged_one(tmp_path) -> None:
    root = tree(tmp_path / "pets", {"train": {"ant": [1], "bee": [2]}})
    path = load_folder(root).path
    assert _intact(path) is True
    assert _intact(root / CACHE_DIR / "missing") is False
    (path / "labels.npy").write_bytes((path / "labels.npy").read_bytes()[:-8])  # truncated
    assert _intact(path) is False


# ------------------------------------------------------------------ the DataModule


def test_image_folder_setup_serves_the_splits_and_writes_the_cache_once(tmp_path,
                                                                       capsys) -> None:
    root = tree(tmp_path / "pets", {"train": {"ant": [10, 11, 12], "bee": [20, 21, 22]}})
    dm = ImageFolderDataModule(data_dir=root, val_size=2, seed=4)
    dm.prepare_data()
    assert not (root / CACHE_DIR).exists()  # not before setup (a refused run writes nothing)
    dm.setup("fit")
    assert (dm.cache.path / "images.npy").is_file() and dm.cache.path.parent == root / CACHE_DIR
    assert {s: len(d[1]) for s, d in (("train", dm.train_set), ("val", dm.val_set),
                                      ("test", dm.test_set))} == {"train": 4, "val": 2, "test": 2}
    assert dm.test_is_val and dm.test_set is dm.val_set
    expected, _ = folder_splits(dm.cache, 4, 2)
    for got, split in ((dm.train_set, "train"), (dm.val_set, "val")):
        assert torch.equal(got[0], expected[split][0]) and torch.equal(got[1], expected[split][1])
    train = dm.train_set
    dm.setup("test")  # a second stage: the same tensors, no second note
    assert dm.train_set is train
    assert capsys.readouterr().out.count("has no test/ folder: test metrics are on the "
                                         "validation split") == 1


def test_image_folder_setup_with_a_test_folder_has_no_note(tmp_path, capsys) -> None:
    root = tree(tmp_path / "pets", {"train": {"ant": [10, 11], "bee": [20, 21]},
                                    "test": {"ant": [30], "bee": [40]}})
    dm = ImageFolderDataModule(data_dir=root, seed=0)
    dm.prepare_data()
    dm.setup()
    assert not dm.test_is_val and sorted(dm.test_set[0].flatten().tolist()) == [
        30, 30, 30, 30, 40, 40, 40, 40]
    assert "test metrics are on the validation split" not in capsys.readouterr().out


def test_image_folder_statistics_are_per_channel_over_the_training_split(tmp_path) -> None:
    # train: (0, 51, 255) and (255, 102, 255); val/: (17, 17, 17), which must not count.
    # mean = (0.5, 0.3, 1.0); std = (0.5, 0.1, 0.001: the variance 0 clamped to 1e-6)
    root = tree(tmp_path / "pets", {"train": {"ant": [(0, 51, 255)], "bee": [(255, 102, 255)]},
                                    "val": {"ant": [(17, 17, 17)]}})
    dm = ImageFolderDataModule(data_dir=root, augment=False, flip=False)
    dm.prepare_data()
    info = dm.data_info()
    assert info["mean"] == pytest.approx([0.5, 0.3, 1.0], abs=1e-12)
    assert info["std"] == pytest.approx([0.5, 0.1, 1e-3], abs=1e-12)
    assert {k: v for k, v in info.items() if k not in ("mean", "std")} == {
        "num_classes": 2, "in_channels": 3, "image_size": 2, "class_names": ["ant", "bee"],
        "augment": None, "flip": False}
    dm = ImageFolderDataModule(data_dir=root, min_crop=0.5)
    assert {k: dm.data_info()[k] for k in ("augment", "flip")} == {"augment": 0.5, "flip": True}


@pytest.mark.parametrize("val_size, train_fraction, n_train", [(3, 1.0, 5), (2, 0.5, 3)])
def test_image_folder_statistics_leave_out_the_held_out_validation_images(
        tmp_path, val_size, train_fraction, n_train) -> None:
    values_ = [0, 40, 80, 120, 160, 200, 240, 255]
    root = tree(tmp_path / "pets", {"train": {"ant": values_[:4], "bee": values_[4:]}})
    dm = ImageFolderDataModule(data_dir=root, val_size=val_size, seed=1,
                               train_fraction=train_fraction)
    dm.prepare_data()
    info = dm.data_info()
    dm.setup()
    train = dm.train_set[0].double().div(255)
    assert len(train) == n_train and len(dm.val_set[1]) == val_size  # setup's training split
    assert info["mean"] == pytest.approx([train.mean().item()], abs=1e-12)
    assert info["std"] == pytest.approx([train.std(unbiased=False).item()], abs=1e-12)
    assert train.mean().item() != pytest.approx(np.mean(values_) / 255, abs=1e-3)  # sensitive


def test_image_folder_statistics_count_every_image_past_the_first_chunk() -> None:
    n = 1100  # more than one chunk of 1024 images; one more image in val/
    pixels = (np.arange(n + 1) % 250 + 3).astype(np.uint8)  # image 1024 is 27, none is 0
    cache = hand_cache(n + 1, {"train": (0, n), "val": (n, n + 1)})
    cache.images = pixels.reshape(n + 1, 1, 1, 1)
    dm = ImageFolderDataModule(data_dir="pets")
    dm.cache = cache  # served as if prepared
    info = dm.data_info()
    x = pixels[:n] / 255
    assert info["mean"] == pytest.approx([x.mean()], abs=1e-12)
    assert info["std"] == pytest.approx([x.std()], abs=1e-12)


# ------------------------------------------------------------------ grey and colour


@pytest.mark.parametrize("pixels, channels, expected", [
    ([7, 9], None, [[7], [9]]),  # all grey: one channel
    ([7, (100, 50, 200)], None, [[7, 7, 7], [100, 50, 200]]),  # one in colour: grey repeated
    ([7, (100, 50, 200)], 1, [[7], [82]]),  # colour to grey: ITU-R 601 luma, 82.05 -> 82
    ([7, 9], 3, [[7, 7, 7], [9, 9, 9]]),
])
def test_image_folder_grey_and_colour_images_get_one_channel_count(tmp_path, pixels, channels,
                                                                   expected) -> None:
    root = tree(tmp_path / "pets", {"train": {"ant": [pixels[0]], "bee": [pixels[1]]}})
    cache = load_folder(root, channels=channels)
    images, _ = cache.split("train")
    assert images.shape == (2, len(expected[0]), 2, 2)
    assert images[:, :, 0, 0].tolist() == expected and (images == images[..., :1, :1]).all()

"""Folder-per-class image datasets (d2l §14.2's hot-dog / ants-and-bees layout), Lightning-free.

``root/{train,val[,test]}/<class>/*.{png,jpg,jpeg}``. Classes are the sorted names of the class
folders of ``train/``. Images are decoded once (PIL) into one uint8 ``(N, C, S, S)`` array saved
as ``root/.d2l-cache/<fingerprint>/images.npy`` and memory-mapped afterwards; the fingerprint
covers every file's path, size and modification time plus the decoding settings, so adding,
removing or changing a file rebuilds the cache (older caches of the folder are removed; nothing
else is ever deleted). A folder that cannot be written (read-only storage) is never written to:
its cache goes to ``$XDG_CACHE_HOME/d2l-lightning/folders/<hash of the folder's path>/`` (else
``~/.cache/...``), said in one line. A damaged cache (a truncated or missing file, an index that
is not JSON) is rebuilt, said in one line.

Bad input: an empty or missing folder (or a file), fewer than two classes, a class folder without
images, or a ``val``/``test`` class that ``train`` lacks is refused (:class:`DataError`, one
sentence, nothing written).
Non-image files and images that do not decode are *skipped* with one warning listing them.
Images of other sizes are resized (shorter side to ``S``, then centre-cropped), with one note.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .download import DataError

if TYPE_CHECKING:
    import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SPLITS = ("train", "val", "test")
CACHE_DIR = ".d2l-cache"
_CACHE_VERSION = 1
#: what reading a damaged cache raises (a missing or truncated file, an index that is not one)
_DAMAGED = (OSError, ValueError, KeyError, TypeError, AttributeError, EOFError)


@dataclass
class FolderScan:
    """What a folder holds, before decoding anything.

    Attributes:
        root: the dataset folder.
        classes: sorted class names (from ``train/``).
        files: per split, ``(path, label)`` of every image file.
        ignored: files that are not images (by suffix), skipped.
    """

    root: Path
    classes: list[str]
    files: dict[str, list[tuple[Path, int]]] = field(default_factory=dict)
    ignored: list[Path] = field(default_factory=list)

    def fingerprint(self, size: int | None, channels: int | None) -> str:
        """Hash of every file's path, size and mtime, and the decoding settings."""
        h = hashlib.sha1(f"v{_CACHE_VERSION} {size} {channels} {self.classes}".encode())
        for split, items in self.files.items():
            for path, label in items:
                st = path.stat()
                h.update(f"{split}/{path.relative_to(self.root)}:{label}:{st.st_size}:"
                         f"{st.st_mtime_ns}\n".encode())
        return h.hexdigest()[:16]


def _images_in(folder: Path, ignored: list[Path]) -> list[Path]:
    out = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            out.append(path)
        elif path.is_file():
            ignored.append(path)
    return out


def scan_folder(root: str | os.PathLike) -> FolderScan:
    """List the splits, classes and image files of ``root``.

    Raises:
        DataError: no such folder, no ``train/``, no class folders, a class folder without
            images, or a ``val``/``test`` class that ``train`` lacks.
    """
    root = Path(root).expanduser()
    if root.exists() and not root.is_dir():
        raise DataError(f"image folder {root} is a file, not a folder: point --data-dir at the "
                        "folder that holds train/<class>/")
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    if not (root / "train").is_dir():
        raise DataError(f"image folder {root} has no train/ folder (expected "
                        f"{root}/train/<class>/*.png|jpg, and optionally val/ and test/)")
    classes = sorted(p.name for p in (root / "train").iterdir()
                     if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root / 'train'} holds no class folders (expected "
                        f"{root}/train/<class>/*.png|jpg)")
    if len(classes) < 2:
        raise DataError(f"{root / 'train'} holds one class folder ('{classes[0]}'), and a "
                        "classifier needs at least two classes: add a folder of images per class")
    scan = FolderScan(root, classes)
    for split in SPLITS:
        folder = root / split
        if not folder.is_dir():
            continue
        names = sorted(p.name for p in folder.iterdir()
                       if p.is_dir() and not p.name.startswith("."))
        unknown = sorted(set(names) - set(classes))
        if unknown:
            raise DataError(f"{folder} has class folder '{unknown[0]}', which train/ lacks")
        items = []
        for name in names:
            files = _images_in(folder / name, scan.ignored)
            if not files:
                raise DataError(f"class folder {folder / name} holds no PNG or JPEG image")
            items += [(f, classes.index(name)) for f in files]
        if not items:
            raise DataError(f"{folder} holds no class folders with images")
        scan.files[split] = items
    return scan


def _decode(path: Path, mode: str):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            return img.convert(mode)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None


def _to_square(img, size: int):
    """Shorter side to ``size`` (bilinear, antialiased), then the central ``size x size``."""
    from PIL import Image

    w, h = img.size
    if (w, h) == (size, size):
        return img
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def _probe(scan: FolderScan) -> tuple[int, int]:
    """``(side, channels)`` from the first training image's header and all images' modes."""
    from PIL import Image

    side, rgb = None, False
    for items in scan.files.values():
        for path, _ in items:
            try:
                with Image.open(path) as img:
                    if side is None:
                        side = min(img.size)
                    rgb = rgb or img.mode not in ("1", "L", "LA", "I", "I;16", "F")
            except (OSError, ValueError, SyntaxError):
                continue  # reported when decoding
    if side is None:
        raise DataError(f"no image of {scan.root} can be read")
    return side, 3 if rgb else 1


@dataclass
class FolderCache:
    """Decoded images of all splits, memory-mapped: ``images[start:end]`` per split."""

    images: np.ndarray  # (N, C, S, S) uint8
    labels: np.ndarray  # (N,) int64
    splits: dict[str, tuple[int, int]]
    classes: list[str]
    path: Path
    built: bool
    root: Path | None = None  # the image folder
    index: dict | None = None  # set while decoded but not yet written
    places: tuple[Path, ...] = ()  # where it may be written: root/.d2l-cache, the user's

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Images and labels of one split."""
        start, end = self.splits[name]
        return self.images[start:end], self.labels[start:end]

    def persist(self) -> FolderCache:
        """Write a cache decoded with ``write=False``; the memory-mapped cache.

        The first place that can be written wins (``root/.d2l-cache``, then the user's cache
        folder, said in one line); where none can, the images stay in memory (said too).
        """
        if self.index is None:
            return self
        why = "no write permission"
        for i, folder in enumerate(self.places or (self.path,)):
            if not _can_write(folder.parent):
                continue
            try:
                _write(folder, self.images, self.labels, self.index)
            except OSError as e:
                why = e.strerror or str(e)
                continue
            if i:
                print(f"note: {self.root} cannot be written ({why}): its image cache is in "
                      f"{folder}", flush=True)
            return _open(folder, self.root, built=True)
        print(f"note: no cache folder of {self.root} can be written ({why}): the decoded "
              "images stay in memory for this run (set $XDG_CACHE_HOME to a writable folder "
              "to keep them)", flush=True)
        self.index = None
        return self


def user_cache_dir(root: Path) -> Path | None:
    """The cache of a folder that cannot be written: one folder per resolved path of ``root``.

    ``$XDG_CACHE_HOME/d2l-lightning/folders/<hash>`` (else ``~/.cache/...``); ``None`` when
    there is no home folder.
    """
    base = os.environ.get("XDG_CACHE_HOME", "").strip()
    try:
        home = Path(base) if base and Path(base).is_absolute() else Path.home() / ".cache"
    except RuntimeError:  # no home folder to be found
        return None
    key = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16]
    return home / "d2l-lightning" / "folders" / key


def _can_write(folder: Path) -> bool:
    """Whether ``folder`` can be created or written: its nearest existing folder can be."""
    p = folder
    while not p.exists() and p != p.parent:
        p = p.parent
    return p.is_dir() and os.access(p, os.W_OK | os.X_OK)


def load_folder(root: str | os.PathLike, image_size: int | None = None,
                channels: int | None = None, write: bool = True) -> FolderCache:
    """Scan ``root``, decode it into the cache if that is missing or stale, memory-map it.

    Args:
        root: the dataset folder.
        image_size: cached side ``S`` (default: the first training image's shorter side).
        channels: 1 or 3 (default: 3 if any image has colour, else 1).
        write: write a new cache now; ``False`` keeps it in memory until
            :meth:`FolderCache.persist` (so a refused run writes nothing).

    Raises:
        DataError: see :func:`scan_folder`; also a class left without decodable images.
    """
    if channels not in (None, 1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels}")
    scan = scan_folder(root)
    fingerprint = scan.fingerprint(image_size, channels)
    user = user_cache_dir(scan.root)
    places = (scan.root / CACHE_DIR / fingerprint,
              *((user / fingerprint,) if user is not None else ()))
    damaged = []
    for folder in places:
        if not folder.exists():
            continue
        try:
            cache = _open(folder, scan.root, built=False)
        except _DAMAGED as e:
            damaged.append(f"note: the image cache {folder} is damaged ({e}): rebuilding it")
            continue
        if cache.classes == scan.classes:
            return cache
        damaged.append(f"note: the image cache {folder} names other classes: rebuilding it")
    for line in damaged[:1]:
        print(line, flush=True)
    side, found = (image_size, channels) if image_size and channels else _probe(scan)
    side, chans = image_size or side, channels or found
    mode = "RGB" if chans == 3 else "L"
    images, labels, splits, skipped, resized, start = [], [], {}, [], 0, 0
    for split, items in scan.files.items():
        kept = Counter()
        for path, label in items:
            img = _decode(path, mode)
            if img is None:
                skipped.append(path)
                continue
            resized += img.size != (side, side)
            arr = np.asarray(_to_square(img, side), dtype=np.uint8)
            images.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))  # HWC -> CHW
            labels.append(label)
            kept[label] += 1
        empty = [scan.classes[c] for c in {lab for _, lab in items} if not kept[c]]
        if empty:
            raise DataError(f"class folder {scan.root / split / empty[0]} holds no image that "
                            "decodes")
        splits[split] = (start, start + sum(kept.values()))
        start = splits[split][1]
    bad = [*scan.ignored, *skipped]
    if bad:
        shown = ", ".join(str(p.relative_to(scan.root)) for p in bad[:10])
        warnings.warn(f"{scan.root}: skipped {len(bad)} file(s) that are not PNG/JPEG images or "
                      f"do not decode: {shown}{' ...' if len(bad) > 10 else ''}", stacklevel=2)
    if resized:
        print(f"note: {scan.root}: {resized} image(s) not {side}x{side} were resized (shorter "
              "side, then centre crop)", flush=True)
    cache = FolderCache(np.stack(images), np.asarray(labels, dtype=np.int64), splits,
                        scan.classes, places[0], built=True, root=scan.root,
                        index={"splits": splits, "classes": scan.classes, "side": side,
                               "channels": chans, "skipped": [str(p) for p in bad]},
                        places=places)
    return cache.persist() if write else cache


def _write(folder: Path, images: np.ndarray, labels: np.ndarray, index: dict) -> None:
    """Write the cache into a temporary folder, rename it into place, drop older caches.

    A damaged cache at ``folder`` is replaced; an intact one (another process wrote the same
    cache meanwhile) is kept.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-"))
    try:
        np.save(tmp / "images.npy", images)
        np.save(tmp / "labels.npy", labels)
        (tmp / "index.json").write_text(json.dumps(index))
        if _intact(folder):
            shutil.rmtree(tmp)
        else:
            if folder.exists():
                shutil.rmtree(folder)  # a damaged cache: ours
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in folder.parent.iterdir():  # caches of earlier versions of the folder: ours
        if old != folder and old.is_dir() and (old / "index.json").is_file():
            shutil.rmtree(old, ignore_errors=True)


def _intact(folder: Path) -> bool:
    try:
        _open(folder, None, built=False)
    except _DAMAGED:
        return False
    return True


def _open(folder: Path, root: Path | None, built: bool) -> FolderCache:
    """Memory-map the cache in ``folder``.

    Raises:
        One of ``_DAMAGED``: a damaged cache.
    """
    index = json.loads((folder / "index.json").read_text())
    images = np.load(folder / "images.npy", mmap_mode="c")  # copy-on-write: writable for torch
    labels = np.load(folder / "labels.npy")
    splits = {str(k): (int(a), int(b)) for k, (a, b) in index["splits"].items()}
    classes = [str(c) for c in index["classes"]]
    n = len(labels)
    if (images.ndim != 4 or images.dtype != np.uint8 or labels.ndim != 1 or len(images) != n
            or "train" not in splits or max(b for _, b in splits.values()) != n):
        raise ValueError("its arrays do not match its index")
    return FolderCache(images, labels, splits, classes, folder, built, root=root)


def folder_splits(cache: FolderCache, seed: int = 0, val_size: int | None = None,
                  train_fraction: float = 1.0,
                  ) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], bool]:
    """The train/val/test tensors of a folder cache, and whether test is the validation split.

    The one definition of the splits of :class:`datamodules.image_folder.ImageFolderDataModule`
    and ``predict.py eval``: ``val/`` if the folder has one, else a seeded ``val_size`` share of
    ``train/`` (default 1/12); a seeded ``train_fraction`` of the rest trains; ``test/`` if
    present, else the validation split.

    Raises:
        DataError: too few training images to hold out a validation split, a bad fraction.
    """
    import torch

    from .idx import default_val_size, split_indices, subsample

    def tensors(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = cache.split(split)
        return torch.from_numpy(images), torch.from_numpy(labels)

    images, labels = tensors("train")
    if "val" in cache.splits:
        train_idx = torch.arange(len(labels))
        val = tensors("val")
    else:
        if len(labels) < 2:
            raise DataError(f"{(cache.root or cache.path.parent.parent) / 'train'} needs at "
                            "least 2 images to hold out a validation split (or add val/)")
        train_idx, val_idx = split_indices(
            len(labels), val_size or default_val_size(len(labels)), seed)
        val = (images[val_idx], labels[val_idx])
    train_idx = train_idx[subsample(len(train_idx), train_fraction, seed)]
    test_is_val = "test" not in cache.splits
    splits = {"train": (images[train_idx], labels[train_idx]), "val": val,
              "test": val if test_is_val else tensors("test")}
    return splits, test_is_val

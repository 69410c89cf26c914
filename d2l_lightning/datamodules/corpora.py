"""The text corpora's files: canonical sources, checksums, and locating them (no Lightning).

Every text DataModule (Time Machine, WikiText, fra-eng, BERT pretraining) finds its files here,
so the download / offline / bad-input rules of :mod:`datamodules.download` hold for all of them.
Files of the canonical size are checked against the canonical SHA-1; smaller files (test
fixtures in the same format) are read as they are.
"""

from __future__ import annotations

import functools
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .download import DataError, RemoteFile, ensure_files, file_digest, resolve_data_dir
from .text import read_text

D2L_MIRROR = "http://d2l-data.s3-accelerate.amazonaws.com/"
_EXAMPLES = ("https://raw.githubusercontent.com/pytorch/examples/main/"
             "word_language_model/data/wikitext-2/")
_WIKITEXT_SOURCE = ("https://huggingface.co/datasets/Salesforce/wikitext "
                    "(the wiki.{train,valid,test}.tokens files)")
SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class Corpus:
    """A text dataset: its folder under the data root, title, files and canonical sizes."""

    folder: str
    title: str
    files: tuple[RemoteFile, ...]
    sizes: tuple[int | None, ...]  # canonical byte sizes (None: unknown, always checked)

    def prepare(self, data_dir: str | Path | None = None) -> Path:
        """Download missing files (one clear :class:`DataError` offline); return the folder."""
        folder = resolve_data_dir(data_dir) / self.folder
        present = [folder / f.name if (folder / f.name).is_file() else None for f in self.files]
        ensure_files(self.title, folder, self.files, present)
        return folder

    def path(self, name: str, data_dir: str | Path | None = None) -> Path:
        """Path of one file, downloaded if needed and checked if it has the canonical size."""
        folder = self.prepare(data_dir)
        i = [f.name for f in self.files].index(name)
        p = folder / name
        st = p.stat()
        _check(str(p), st.st_size, st.st_mtime_ns, self.files[i].checksum, self.sizes[i])
        return p


@functools.lru_cache(maxsize=32)
def _check(path: str, size: int, _mtime: int, checksum: str, canonical: int | None) -> None:
    if canonical is not None and size != canonical:
        return  # a fixture or a partial copy: read as is
    algo, expected = checksum.split(":", 1)
    got = file_digest(path, algo)
    if got != expected:
        raise DataError(f"{path} fails its checksum ({algo} {got}, expected {expected}); "
                        "delete it so it can be downloaded again")


TIME_MACHINE = Corpus("timemachine", "The Time Machine", (
    RemoteFile("timemachine.txt", "sha1:090b5e7e70c295757f55df93cb0a180b9691891a",
               (D2L_MIRROR,)),), (178_979,))

FRA_ENG = Corpus("fra-eng", "English-French (fra-eng)", (
    RemoteFile("fra-eng.zip", "sha1:94646ad1522d915e7b0f9296181140edcf86a4f5", (D2L_MIRROR,)),),
    (3_420_152,))

WIKITEXT2 = Corpus("wikitext-2", "WikiText-2", tuple(
    RemoteFile(f"wiki.{s}.tokens", f"sha1:{h}", (_EXAMPLES,), remote_name=f"{s}.txt",
               source=_EXAMPLES + "{train,valid,test}.txt")
    for s, h in zip(SPLITS, ("863f29c46ef9d167fff4940ec821195882fe29d1",
                             "0418625c8b4da6e4b5c7a0b9e78d4ae8f7ee5422",
                             "c7b8ce0aa086fb34dab808c5c49224211eb2b172"))),
    (10_797_148, 1_121_681, 1_256_449))

WIKITEXT103 = Corpus("wikitext-103", "WikiText-103", tuple(
    RemoteFile(f"wiki.{s}.tokens", f"sha1:{h}", (), source=_WIKITEXT_SOURCE)
    for s, h in zip(SPLITS, ("b7497e2dfe77e72cfef5e3dbc61b7b53712ac211",
                             "c326ac59dc587676d58c422eb8a03e119582f92b",
                             "8a5befc548865cec54ed4273cf87dbbad60d1e47"))),
    (None, None, None))

WIKITEXT = {"wikitext2": WIKITEXT2, "wikitext103": WIKITEXT103}


def read_time_machine(data_dir: str | Path | None = None) -> str:
    """The raw text of *The Time Machine* (d2l's copy)."""
    return read_text(TIME_MACHINE.path("timemachine.txt", data_dir), TIME_MACHINE.title)


def read_wikitext(name: str, split: str, data_dir: str | Path | None = None) -> list[str]:
    """Lines of one WikiText split (``name``: ``wikitext2`` or ``wikitext103``).

    Args:
        name: ``wikitext2`` or ``wikitext103``.
        split: ``train``, ``valid`` or ``test``.
        data_dir: data root.
    """
    if split not in SPLITS:
        raise DataError(f"unknown WikiText split '{split}'; choose from: {', '.join(SPLITS)}")
    corpus = WIKITEXT[name]
    return read_text(corpus.path(f"wiki.{split}.tokens", data_dir), corpus.title).splitlines()


def extracted_fra_txt(data_dir: str | Path | None = None) -> Path | None:
    """An extracted ``fra.txt`` under ``fra-eng/`` (or ``fra-eng/fra-eng/``), if there is one."""
    folder = resolve_data_dir(data_dir) / FRA_ENG.folder
    return next((p for p in (folder / "fra.txt", folder / "fra-eng" / "fra.txt")
                 if p.is_file()), None)


def read_fra_eng(data_dir: str | Path | None = None) -> str:
    """The raw ``fra.txt`` (``English<TAB>French`` per line), from the zip or extracted."""
    extracted = extracted_fra_txt(data_dir)
    if extracted is not None:
        return read_text(extracted, FRA_ENG.title)
    path = FRA_ENG.path("fra-eng.zip", data_dir)
    try:
        with zipfile.ZipFile(path) as z:
            name = next((n for n in z.namelist() if n.endswith("fra.txt")), None)
            if name is None:
                raise DataError(f"{path} holds no fra.txt; delete it so it can be downloaded "
                                "again")
            data = z.read(name)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise DataError(f"{path} is not a valid zip file ({e}); delete it so it can be "
                        "downloaded again") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: fra.txt is not UTF-8 ({e.reason}); the file is corrupt") from None

"""Data root resolution and checked, atomic downloads (no Lightning import).

The data root comes from ``--data-dir``, else the ``D2L_DATA_DIR`` environment variable, else
``./data``. A missing file is downloaded from its canonical mirrors, checked against its checksum
and only then renamed into place; when that fails (no network here) the user gets one clear
:class:`DataError` naming the files, the folder and where to get them.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ENV_VAR = "D2L_DATA_DIR"


class DataError(Exception):
    """Missing, corrupt or undownloadable data; the message is meant for the user as is."""


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """``--data-dir``, else ``$D2L_DATA_DIR``, else ``./data``."""
    if data_dir:
        return Path(data_dir).expanduser()
    env = os.environ.get(ENV_VAR, "").strip()
    return Path(env).expanduser() if env else Path("data")


@dataclass(frozen=True)
class RemoteFile:
    """A file of a dataset: its name, checksum (``algo:hex``) and mirror base URLs.

    ``remote_name`` is the file's name on the mirrors when it differs from ``name``;
    ``source`` says where to get the file by hand when there is no mirror.
    """

    name: str
    checksum: str
    mirrors: Sequence[str]
    remote_name: str | None = None
    source: str | None = None


def file_digest(path: str | os.PathLike, algo: str) -> str:
    """Hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(remote: RemoteFile, folder: Path, timeout: float = 30.0) -> Path:
    """Fetch ``remote`` into ``folder``: first good mirror wins, checksum checked, atomic.

    Raises:
        DataError: every mirror failed or gave bytes with the wrong checksum; nothing is left
            in ``folder``.
    """
    algo, expected = remote.checksum.split(":", 1)
    target = folder / remote.name
    errors = []
    for base in remote.mirrors:
        url = base.rstrip("/") + "/" + (remote.remote_name or remote.name)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{remote.name}.", suffix=".part")
        except OSError as e:
            raise DataError(f"cannot write to {folder} ({e.strerror})") from None
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as r:
                h = hashlib.new(algo)
                for chunk in iter(lambda: r.read(1 << 20), b""):
                    h.update(chunk)
                    out.write(chunk)
            if h.hexdigest() != expected:
                errors.append(f"{url}: checksum mismatch ({algo} {h.hexdigest()}, "
                              f"expected {expected})")
                continue
            mask = os.umask(0)  # mkstemp's 600 -> what a plain open() would give
            os.umask(mask)
            os.chmod(tmp, 0o666 & ~mask)
            os.replace(tmp, target)
            return target
        except (urllib.error.URLError, OSError, ValueError) as e:
            errors.append(f"{url}: {getattr(e, 'reason', None) or e}")
        finally:
            Path(tmp).unlink(missing_ok=True)
    if not errors:
        errors.append("no download mirror is known")
    raise DataError(f"could not download {remote.name}: " + "; ".join(errors))


def ensure_files(
    title: str, folder: Path, files: Sequence[RemoteFile], present: Sequence[Path | None]
) -> None:
    """Download each file of ``files`` whose ``present`` entry is ``None``.

    On failure, raise one :class:`DataError` that names the dataset, the missing files, the
    folder and the canonical source, and says how to point the project at a local copy.
    """
    missing = [f for f, p in zip(files, present) if p is None]
    failures = []
    for remote in missing:
        try:
            download(remote, folder)
        except DataError as e:
            failures.append(str(e))
    if failures:
        names = ", ".join(f.name for f in missing)
        first = missing[0]
        source = first.source or (first.mirrors[0] if first.mirrors else "its publisher")
        raise DataError(
            f"{title} is missing from {folder.resolve()} ({names}) and could not be downloaded "
            f"({failures[0]}). Get the files from {source} and put them in that folder, or point "
            f"--data-dir / {ENV_VAR} at a folder that holds {folder.name}/."
        )

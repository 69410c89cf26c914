"""Data root resolution and checked, atomic downloads (no Lightning import).

The data root comes from ``--data-dir``, else the ``D2L_DATA_DIR`` environment variable, else
``./data``. A missing file is downloaded from its canonical mirrors, checked against its checksum
and only then renamed into place; when that fails (no network here) the user gets one clear
:class:`DataError` naming the files, the folder and where to get them.
"""

from __future__ import annotations

import hashlib
import math
import os
import socket
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ENV_VAR = "D2L_DATA_DIR"


class DataError(Exception):
    """Missing, corrupt or undownloadable data; the message is meant for the user as is."""


class DownloadInterrupted(KeyboardInterrupt):
    """Ctrl-C during a download; the message (for the user) says what was kept."""


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


#: seconds a dataset's downloads may wait, in all, for mirrors that do not answer
DEFAULT_TIMEOUT = 20.0
#: the most ``$D2L_DOWNLOAD_TIMEOUT`` may say (an hour of waiting for silent mirrors)
MAX_TIMEOUT = 3600.0
TIMEOUT_ENV = "D2L_DOWNLOAD_TIMEOUT"
_TIMEOUT_TYPES = (TimeoutError, socket.timeout, ConnectionError, socket.gaierror)


def download_timeout() -> float:
    """``$D2L_DOWNLOAD_TIMEOUT`` seconds, else :data:`DEFAULT_TIMEOUT`.

    Raises:
        DataError: not a number, or not in ``(0, MAX_TIMEOUT]`` (0, negative, inf, nan).
    """
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    try:
        value = float(raw or DEFAULT_TIMEOUT)
    except ValueError:
        raise DataError(f"${TIMEOUT_ENV} must be a number of seconds, got "
                        f"{os.environ[TIMEOUT_ENV]!r}") from None
    if not (math.isfinite(value) and 0 < value <= MAX_TIMEOUT):
        raise DataError(f"${TIMEOUT_ENV} must be a number of seconds above 0 and at most "
                        f"{MAX_TIMEOUT:g}, got {os.environ[TIMEOUT_ENV]!r}; unset it for the "
                        f"default {DEFAULT_TIMEOUT:g} s")
    return value


def check_folder_path(folder: Path) -> None:
    """Refuse a data folder whose path runs into a file (``--data-dir`` naming a file).

    Raises:
        DataError: ``folder`` or a folder above it is a file; nothing is created.
    """
    for p in (folder, *folder.parents):
        if p.exists() or p.is_symlink():
            if not p.is_dir():
                raise DataError(f"{p} is a file, not a folder: point --data-dir (or "
                                f"${ENV_VAR}) at the folder that holds {folder.name}/")
            return


class _Budget:
    """The waiting time one dataset may spend on mirrors that fail, and the mirrors left."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.left = seconds
        self.dead: dict[str, str] = {}  # mirror -> why it failed for every file


def _is_mirror_wide(e: BaseException) -> bool:
    """A failure of the mirror itself (no answer, refused, unknown host), not of one file."""
    if isinstance(e, urllib.error.HTTPError):
        return False
    reason = getattr(e, "reason", e)
    return isinstance(reason, _TIMEOUT_TYPES) or isinstance(e, _TIMEOUT_TYPES)


def _make_folder(folder: Path) -> list[Path]:
    """Create ``folder``; return the folders that did not exist (deepest first)."""
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    return created


def download(remote: RemoteFile, folder: Path, timeout: float | None = None,
             budget: _Budget | None = None) -> Path:
    """Fetch ``remote`` into ``folder``: first good mirror wins, checksum checked, atomic.

    Each attempt waits at most what is left of ``budget`` (shared by a dataset's files, so a
    network that never answers costs ``timeout`` seconds in all), and a mirror that does not
    answer is not tried again for the dataset's other files. ``folder`` is created only once a
    mirror answers, and removed again if nothing lands in it.

    Raises:
        DataError: every mirror failed or gave bytes with the wrong checksum; nothing is left
            in ``folder``.
    """
    budget = budget or _Budget(timeout or download_timeout())
    algo, expected = remote.checksum.split(":", 1)
    target = folder / remote.name
    errors = []
    for i, base in enumerate(remote.mirrors):
        url = base.rstrip("/") + "/" + (remote.remote_name or remote.name)
        if base in budget.dead:
            errors.append(f"{url}: skipped, the mirror {budget.dead[base]}")
            continue
        if budget.left <= 0:
            errors.append(f"{url}: not tried, {budget.seconds:g} s of waiting spent "
                          f"(${TIMEOUT_ENV})")
            continue
        live = sum(m not in budget.dead for m in remote.mirrors[i:])  # share the rest fairly
        wait = budget.left / max(live, 1)
        print(f"downloading {remote.name} from {url} (waiting at most {wait:.0f} s for an "
              "answer)", flush=True)
        t0 = time.monotonic()
        created: list[Path] = []
        tmp = None
        try:
            with urllib.request.urlopen(url, timeout=wait) as r:
                try:
                    created = _make_folder(folder)
                    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{remote.name}.",
                                               suffix=".part")
                except OSError as e:
                    raise DataError(f"cannot write to {folder} ({e.strerror})") from None
                with os.fdopen(fd, "wb") as out:
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
            why = f"{getattr(e, 'reason', None) or e}"
            errors.append(f"{url}: {why}")
            budget.left -= time.monotonic() - t0
            if _is_mirror_wide(e):
                budget.dead[base] = f"did not answer ({why})"
        except KeyboardInterrupt:  # the partial file goes (finally); complete files stay
            raise DownloadInterrupted(
                f"interrupted while downloading {remote.name} into {folder}: no partial file "
                "is left and the files already complete are kept; run the command again to "
                "download the rest") from None
        finally:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            for p in created:  # deepest first: only folders this attempt made, if still empty
                if not target.exists() and p.is_dir() and not any(p.iterdir()):
                    p.rmdir()
    if not errors:
        errors.append("no download mirror is known")
    raise DataError(f"could not download {remote.name}: " + "; ".join(errors))


def ensure_files(
    title: str, folder: Path, files: Sequence[RemoteFile], present: Sequence[Path | None]
) -> None:
    """Download each file of ``files`` whose ``present`` entry is ``None``.

    The files share one waiting budget (``$D2L_DOWNLOAD_TIMEOUT`` seconds), and the downloads
    stop at the first file that no mirror could give. On failure, raise one
    :class:`DataError` that names the dataset, the missing files, the folder and the canonical
    source, and says how to point the project at a local copy.
    """
    missing = [f for f, p in zip(files, present) if p is None]
    if missing:
        check_folder_path(folder)
    budget = _Budget(download_timeout()) if missing else None
    failure = None
    for remote in missing:
        try:
            download(remote, folder, budget=budget)
        except DataError as e:
            failure = str(e)
            break
    if failure:
        names = ", ".join(f.name for f in missing if not (folder / f.name).exists())
        first = missing[0]
        source = first.source or (first.mirrors[0] if first.mirrors else "its publisher")
        raise DataError(
            f"{title} is missing from {folder.resolve()} ({names}) and could not be downloaded "
            f"({failure}). Get the files from {source} and put them in that folder, or point "
            f"--data-dir / {ENV_VAR} at a folder that holds {folder.name}/."
        )

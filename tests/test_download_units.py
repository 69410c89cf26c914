"""download.py unit by unit (1 of 2): the data root, checksums, the timeout setting, the
folder checks and the shared budget. Every file is a few bytes in ``tmp_path``; nothing here
reaches a socket (test_download_files.py: the downloads and the offline message)."""

from __future__ import annotations

import hashlib
import socket
import urllib.error
from pathlib import Path

import pytest
from download_helpers import (  # noqa: F401 (the fixture applies to every test here)
    MD5,
    PAYLOAD,
    REFUSED,
    SILENT,
    Response,
    _no_timeout_setting,
    not_found,
)

from d2l_lightning.datamodules import download as dl
from d2l_lightning.datamodules.download import DataError

# --- the data root ----------------------------------------------------------------------------


@pytest.mark.parametrize("flag, env, expected", [
    ("x", "/env", "x"),                 # the flag wins over the variable
    ("", "/env", "/env"),               # an empty flag is no flag
    (None, "  /env/d  ", "/env/d"),     # the variable, stripped
    (None, "~/d", "HOME/d"),            # ~ expanded in the variable
    ("~/f", None, "HOME/f"),            # ... and in the flag
    (None, None, "data"),               # neither: ./data
    (None, "   ", "data"),              # a blank variable is no variable
])
def test_data_root_is_the_flag_else_the_variable_else_data(flag, env, expected, monkeypatch,
                                                          tmp_path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    if env is None:
        monkeypatch.delenv("D2L_DATA_DIR", raising=False)
    else:
        monkeypatch.setenv("D2L_DATA_DIR", env)
    assert dl.resolve_data_dir(flag) == Path(expected.replace("HOME", str(tmp_path)))


# --- checksums and the timeout setting --------------------------------------------------------


@pytest.mark.parametrize("algo", ["md5", "sha256"])
@pytest.mark.parametrize("data", [b"", b"abc", PAYLOAD])
def test_file_digest_is_the_hash_of_every_byte(algo, data, tmp_path) -> None:
    f = tmp_path / "f.bin"
    f.write_bytes(data)
    assert dl.file_digest(f, algo) == hashlib.new(algo, data).hexdigest()
    assert dl.file_digest(str(f), algo) == hashlib.new(algo, data).hexdigest()


def test_file_digest_reads_one_mebibyte_at_a_time(monkeypatch, tmp_path) -> None:
    """A multi-GB archive is hashed in constant memory: 1 MiB reads until the empty one."""
    f = Response(PAYLOAD)
    monkeypatch.setattr(dl, "open", lambda path, mode: f, raising=False)
    assert dl.file_digest(tmp_path / "f", "md5") == MD5[4:]
    assert f.sizes == [1 << 20] * 3


@pytest.mark.parametrize("raw, seconds", [
    (None, 20.0), ("", 20.0), ("   ", 20.0), (" 7.5 ", 7.5), ("3600", 3600.0), ("1e-3", 1e-3),
])
def test_download_timeout_is_the_variable_else_twenty_seconds(raw, seconds, monkeypatch) -> None:
    if raw is not None:
        monkeypatch.setenv(dl.TIMEOUT_ENV, raw)
    assert dl.download_timeout() == seconds


@pytest.mark.parametrize("raw", ["0", "-1", "3600.5", "inf", "nan"])
def test_download_timeout_outside_zero_to_an_hour_is_refused(raw, monkeypatch) -> None:
    monkeypatch.setenv(dl.TIMEOUT_ENV, raw)
    with pytest.raises(DataError) as e:
        dl.download_timeout()
    assert str(e.value) == (f"$D2L_DOWNLOAD_TIMEOUT must be a number of seconds above 0 and at "
                            f"most 3600, got '{raw}'; unset it for the default 20 s")


def test_download_timeout_that_is_not_a_number_is_refused(monkeypatch) -> None:
    monkeypatch.setenv(dl.TIMEOUT_ENV, " 2 s")
    with pytest.raises(DataError) as e:
        dl.download_timeout()
    assert str(e.value) == "$D2L_DOWNLOAD_TIMEOUT must be a number of seconds, got ' 2 s'"
    assert e.value.__suppress_context__  # one sentence: no chained ValueError


# --- the folder -------------------------------------------------------------------------------


@pytest.mark.parametrize("file_at", [0, 1, 2])
def test_a_folder_path_through_a_file_is_refused_naming_the_file(file_at, tmp_path) -> None:
    folder = tmp_path / "a" / "b" / "mnist"
    blocker = [folder, folder.parent, folder.parent.parent][file_at]
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_bytes(b"x")
    with pytest.raises(DataError) as e:
        dl.check_folder_path(folder)
    assert str(e.value) == (f"{blocker} is a file, not a folder: point --data-dir (or "
                            "$D2L_DATA_DIR) at the folder that holds mnist/")


def test_a_dangling_link_in_the_folder_path_is_refused(tmp_path) -> None:
    (tmp_path / "data").symlink_to(tmp_path / "gone")
    with pytest.raises(DataError, match=f"^{tmp_path / 'data'} is a file, not a folder"):
        dl.check_folder_path(tmp_path / "data" / "mnist")


def test_a_folder_path_through_folders_is_accepted_and_not_created(tmp_path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert dl.check_folder_path(tmp_path / "link" / "x" / "mnist") is None
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["link", "real"]


def test_make_folder_returns_the_new_folders_deepest_first(tmp_path) -> None:
    (tmp_path / "a").mkdir()
    assert dl._make_folder(tmp_path / "a" / "b" / "c") == [tmp_path / "a" / "b" / "c",
                                                           tmp_path / "a" / "b"]
    assert (tmp_path / "a" / "b" / "c").is_dir()
    assert dl._make_folder(tmp_path / "a" / "b" / "c") == []


def test_budget_starts_full_with_no_dead_mirror() -> None:
    b = dl._Budget(7.5)
    assert (b.seconds, b.left, b.dead) == (7.5, 7.5, {})


@pytest.mark.parametrize("error, wide", [
    (SILENT, True), (REFUSED, True),
    (urllib.error.URLError(socket.gaierror(-2, "Name or service not known")), True),
    (TimeoutError("timed out"), True), (ConnectionResetError(104, "reset"), True),
    (not_found("http://m/f"), False), (urllib.error.URLError("unknown url type: x"), False),
    (OSError(5, "I/O error"), False), (ValueError("bad url"), False),
])
def test_only_a_mirror_that_does_not_answer_counts_as_dead(error, wide) -> None:
    assert dl._is_mirror_wide(error) is wide

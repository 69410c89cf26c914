"""download.py unit by unit (2 of 2): checked atomic downloads from the mirrors, the budget
they share, and the one-sentence offline message. The network is a stub (``urlopen`` and the
clock) and every file is a few bytes in ``tmp_path``; nothing here reaches a socket."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest
from download_helpers import (  # noqa: F401 (the fixture applies to every test here)
    MD5,
    PAYLOAD,
    REFUSED,
    SILENT,
    Net,
    Response,
    _no_timeout_setting,
    not_found,
)

from d2l_lightning.datamodules import download as dl
from d2l_lightning.datamodules.download import DataError, RemoteFile

# --- download: one file -----------------------------------------------------------------------


def test_download_writes_the_served_bytes_and_nothing_else(monkeypatch, tmp_path) -> None:
    Net(monkeypatch, {"http://m/f.gz": PAYLOAD})
    folder = tmp_path / "ds"
    got = dl.download(RemoteFile("f.gz", MD5, ["http://m/"]), folder, timeout=5)
    assert got == folder / "f.gz" and got.read_bytes() == PAYLOAD
    assert [p.name for p in folder.iterdir()] == ["f.gz"]  # no .part file left


@pytest.mark.parametrize("base, remote_name, url", [
    ("http://m/x/", None, "http://m/x/f.gz"),
    ("http://m/x", None, "http://m/x/f.gz"),
    ("http://m/x//", "F.GZ", "http://m/x/F.GZ"),  # the mirror's name; kept locally as f.gz
    ("http://m/MNIST_X/", None, "http://m/MNIST_X/f.gz"),  # only slashes are stripped
])
def test_download_url_is_the_mirror_then_the_remote_name(base, remote_name, url, monkeypatch,
                                                          tmp_path) -> None:
    net = Net(monkeypatch, {url: PAYLOAD})
    got = dl.download(RemoteFile("f.gz", MD5, [base], remote_name), tmp_path, timeout=5)
    assert net.calls == [(url, 5)] and got == tmp_path / "f.gz"


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_downloaded_file_has_the_mode_a_plain_open_gives(umask, mode, monkeypatch,
                                                         tmp_path) -> None:
    Net(monkeypatch, {"http://m/f.gz": b"abc"})
    old = os.umask(umask)
    try:
        got = dl.download(RemoteFile("f.gz", "md5:" + hashlib.md5(b"abc").hexdigest(),
                                     ["http://m/"]), tmp_path, timeout=5)
        assert os.umask(umask) == umask  # the umask is left as it was
    finally:
        os.umask(old)
    assert got.stat().st_mode & 0o777 == mode


def test_download_waits_from_the_variable_without_a_timeout(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv(dl.TIMEOUT_ENV, "7")
    net = Net(monkeypatch, {"http://m/f.gz": PAYLOAD})
    dl.download(RemoteFile("f.gz", MD5, ["http://m/"]), tmp_path)
    assert net.calls == [("http://m/f.gz", 7.0)]


def test_wait_is_the_budget_left_shared_by_the_mirrors_left(monkeypatch, tmp_path,
                                                            capsys) -> None:
    """12 s, three mirrors: 12/3 = 4; 3 s spent: 9/2 = 4.5; 1 s more: 8/1 = 8."""
    net = Net(monkeypatch, {"http://a/f": SILENT, "http://b/f": not_found("http://b/f"),
                            "http://c/f": PAYLOAD}, cost={"http://a/f": 3, "http://b/f": 1})
    budget = dl._Budget(12)
    dl.download(RemoteFile("f", MD5, ["http://a", "http://b", "http://c"]), tmp_path,
                budget=budget)
    assert net.calls == [("http://a/f", 4.0), ("http://b/f", 4.5), ("http://c/f", 8.0)]
    assert budget.left == 8 and budget.seconds == 12
    assert capsys.readouterr().out.splitlines() == [
        "downloading f from http://a/f (waiting at most 4 s for an answer)",
        "downloading f from http://b/f (waiting at most 4 s for an answer)",  # 4.5 -> "4"
        "downloading f from http://c/f (waiting at most 8 s for an answer)"]


def test_a_mirror_that_did_not_answer_is_skipped_and_not_counted(monkeypatch, tmp_path) -> None:
    """a died for a previous file: b alone shares the 6 s left, a is named as skipped."""
    net = Net(monkeypatch, {})
    budget = dl._Budget(6)
    budget.dead["http://a"] = "did not answer (timed out)"
    with pytest.raises(DataError) as e:
        dl.download(RemoteFile("f", MD5, ["http://b", "http://a"]), tmp_path, budget=budget)
    assert net.calls == [("http://b/f", 6.0)]
    assert str(e.value) == ("could not download f: http://b/f: [Errno 111] Connection refused; "
                            "http://a/f: skipped, the mirror did not answer (timed out)")


@pytest.mark.parametrize("error, dead", [
    (SILENT, {"http://a": "did not answer (timed out)"}),
    (REFUSED, {"http://a": "did not answer ([Errno 111] Connection refused)"}),
    (not_found("http://a/f"), {}),  # one file missing there: the mirror stays
    (ValueError("unknown url type"), {}),
])
def test_failed_attempt_spends_its_time_and_marks_only_silent_mirrors(error, dead, monkeypatch,
                                                                     tmp_path) -> None:
    Net(monkeypatch, {"http://a/f": error}, cost={"http://a/f": 2.5})
    budget = dl._Budget(10)
    with pytest.raises(DataError):
        dl.download(RemoteFile("f", MD5, ["http://a"]), tmp_path / "ds", budget=budget)
    assert budget.left == 7.5 and budget.dead == dead
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize("spent, tried", [
    (2.0, ["http://a/f"]),                            # left exactly 0: nothing more is tried
    (1.5, ["http://a/f", "http://b/f", "http://c/f"]),  # 0.5 s left: still tried
])
def test_no_mirror_is_tried_once_the_budget_is_spent(spent, tried, monkeypatch,
                                                     tmp_path) -> None:
    net = Net(monkeypatch, {}, cost={"http://a/f": spent})
    with pytest.raises(DataError) as e:
        dl.download(RemoteFile("f", MD5, ["http://a", "http://b", "http://c"]), tmp_path,
                    timeout=2)
    assert [url for url, _ in net.calls] == tried
    if spent == 2.0:
        assert str(e.value).endswith(
            "; http://b/f: not tried, 2 s of waiting spent ($D2L_DOWNLOAD_TIMEOUT)"
            "; http://c/f: not tried, 2 s of waiting spent ($D2L_DOWNLOAD_TIMEOUT)")
    else:
        assert net.calls[1:] == [("http://b/f", 0.25), ("http://c/f", 0.5)]


def test_the_download_line_is_out_before_the_wait_starts(monkeypatch, tmp_path) -> None:
    """Flushed: piped to a log, the line shows while a silent mirror is waited for."""
    events: list[str] = []

    class Stream(io.StringIO):
        def flush(self) -> None:
            events.append(f"flush {self.getvalue()!r}")

    net = Net(monkeypatch, {"http://a/f": PAYLOAD})
    opened = net.urlopen
    monkeypatch.setattr(dl.urllib.request, "urlopen",
                        lambda url, timeout: events.append("urlopen") or opened(url, timeout))
    monkeypatch.setattr("sys.stdout", Stream())
    dl.download(RemoteFile("f", MD5, ["http://a"]), tmp_path, timeout=3)
    line = "downloading f from http://a/f (waiting at most 3 s for an answer)\n"
    assert events == [f"flush {line!r}", "urlopen"]


def test_the_partial_file_is_hidden_in_the_folder_until_checked(monkeypatch, tmp_path) -> None:
    """While bytes arrive they go to ``.f.gz.<random>.part`` beside the target (so the final
    rename is atomic, and no reader takes a partial file for the dataset's)."""
    seen: list[list[str]] = []

    class Watched(Response):
        def read(self, size: int) -> bytes:
            seen.append(sorted(p.name for p in (tmp_path / "ds").iterdir()))
            return super().read(size)

    response = Watched(PAYLOAD)
    monkeypatch.setattr(dl.urllib.request, "urlopen", lambda url, timeout: response)
    dl.download(RemoteFile("f.gz", MD5, ["http://a"]), tmp_path / "ds", timeout=3)
    assert response.sizes == [1 << 20] * 3  # streamed in 1 MiB chunks: 2 of PAYLOAD, then b""
    assert all(names == seen[0] for names in seen)
    (part,) = seen[0]
    assert part.startswith(".f.gz.") and part.endswith(".part") and len(part) > 11


def test_a_failed_download_leaves_a_folder_another_process_wrote_to(monkeypatch,
                                                                    tmp_path) -> None:
    """Two runs fill a new data folder at once: this one fails, the other's file stays."""
    class Racing(Response):
        def read(self, size: int) -> bytes:
            (tmp_path / "new" / "ds" / "other.gz").write_bytes(b"theirs")
            return super().read(size)

    monkeypatch.setattr(dl.urllib.request, "urlopen", lambda url, timeout: Racing(b"bad"))
    with pytest.raises(DataError, match="checksum mismatch"):
        dl.download(RemoteFile("f.gz", MD5, ["http://a"]), tmp_path / "new" / "ds", timeout=3)
    assert sorted(p.name for p in (tmp_path / "new" / "ds").iterdir()) == ["other.gz"]


def test_wrong_bytes_are_refused_and_the_next_mirror_serves(monkeypatch, tmp_path) -> None:
    net = Net(monkeypatch, {"http://a/f": b"bad", "http://b/f": PAYLOAD})
    folder = tmp_path / "ds"
    assert dl.download(RemoteFile("f", MD5, ["http://a", "http://b"]), folder,
                       timeout=4).read_bytes() == PAYLOAD
    assert net.calls == [("http://a/f", 2.0), ("http://b/f", 4.0)]  # a mismatch spends no wait
    assert [p.name for p in folder.iterdir()] == ["f"]


def test_wrong_bytes_everywhere_name_both_checksums(monkeypatch, tmp_path) -> None:
    Net(monkeypatch, {"http://a/f": b"bad"})
    with pytest.raises(DataError) as e:
        dl.download(RemoteFile("f", MD5, ["http://a"]), tmp_path / "x" / "ds", timeout=4)
    assert str(e.value) == (f"could not download f: http://a/f: checksum mismatch (md5 "
                            f"{hashlib.md5(b'bad').hexdigest()}, expected {MD5[4:]})")
    assert list(tmp_path.iterdir()) == []  # both folders it made are removed again


def test_failed_download_keeps_folders_it_did_not_make_or_that_hold_files(monkeypatch,
                                                                         tmp_path) -> None:
    Net(monkeypatch, {"http://a/f": b"bad"})
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "other").write_bytes(b"kept")
    with pytest.raises(DataError):
        dl.download(RemoteFile("f", MD5, ["http://a"]), tmp_path / "ds", timeout=4)
    with pytest.raises(DataError):
        dl.download(RemoteFile("f", MD5, ["http://a"]), tmp_path / "new", timeout=4)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["ds", "other"]


def test_no_mirror_at_all_is_one_sentence(monkeypatch, tmp_path) -> None:
    net = Net(monkeypatch, {})
    with pytest.raises(DataError, match="^could not download f: no download mirror is known$"):
        dl.download(RemoteFile("f", MD5, []), tmp_path, timeout=4)
    assert net.calls == []


def test_unwritable_folder_is_one_sentence(monkeypatch, tmp_path) -> None:
    Net(monkeypatch, {"http://a/f": PAYLOAD})
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(DataError) as e:
        dl.download(RemoteFile("f", MD5, ["http://a"]), tmp_path / "file" / "ds", timeout=4)
    assert str(e.value) == f"cannot write to {tmp_path / 'file' / 'ds'} (Not a directory)"
    assert e.value.__suppress_context__


def test_ctrl_c_mid_download_removes_the_part_file(monkeypatch, tmp_path) -> None:
    class Interrupted(Response):
        def read(self, size: int) -> bytes:
            if self.pos:
                raise KeyboardInterrupt
            return super().read(size)

    monkeypatch.setattr(dl.urllib.request, "urlopen", lambda url, timeout: Interrupted(PAYLOAD))
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "done.gz").write_bytes(b"kept")
    with pytest.raises(dl.DownloadInterrupted) as e:
        dl.download(RemoteFile("f.gz", MD5, ["http://a"]), tmp_path / "ds", timeout=4)
    assert str(e.value) == (f"interrupted while downloading f.gz into {tmp_path / 'ds'}: no "
                            "partial file is left and the files already complete are kept; run "
                            "the command again to download the rest")
    assert [p.name for p in (tmp_path / "ds").iterdir()] == ["done.gz"]


# --- ensure_files: a dataset's files and the offline message ---------------------------------


def _files(n: int, mirrors=("http://a",), source: str | None = None) -> list[RemoteFile]:
    return [RemoteFile(f"f{i}", MD5, list(mirrors), source=source) for i in range(n)]


def test_only_the_missing_files_are_downloaded(monkeypatch, tmp_path) -> None:
    net = Net(monkeypatch, {"http://a/f0": PAYLOAD, "http://a/f2": PAYLOAD})
    (tmp_path / "ds").mkdir()
    dl.ensure_files("X", tmp_path / "ds", _files(3), [None, tmp_path / "ds" / "f1", None])
    assert [url for url, _ in net.calls] == ["http://a/f0", "http://a/f2"]
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == ["f0", "f2"]


def test_nothing_missing_checks_nothing(monkeypatch, tmp_path) -> None:
    """No download, no folder check, and the timeout setting is not even read."""
    net = Net(monkeypatch, {})
    monkeypatch.setenv(dl.TIMEOUT_ENV, "abc")
    (tmp_path / "file").write_bytes(b"x")
    dl.ensure_files("X", tmp_path / "file" / "ds", _files(2), [Path("f0"), Path("f1")])
    assert net.calls == []


def test_a_folder_path_through_a_file_is_refused_before_any_download(monkeypatch,
                                                                     tmp_path) -> None:
    net = Net(monkeypatch, {})
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(DataError, match="is a file, not a folder"):
        dl.ensure_files("X", tmp_path / "file" / "ds", _files(1), [None])
    assert net.calls == []


def test_the_files_share_one_budget_and_skip_a_silent_mirror(monkeypatch, tmp_path) -> None:
    """6 s: a is silent for 2 s (6/2 = 3 s wait), b serves f0 with 4 s left, f1 skips a."""
    monkeypatch.setenv(dl.TIMEOUT_ENV, "6")
    net = Net(monkeypatch, {"http://a/f0": SILENT, "http://b/f0": PAYLOAD,
                            "http://b/f1": PAYLOAD}, cost={"http://a/f0": 2})
    dl.ensure_files("X", tmp_path, _files(2, ("http://a", "http://b")), [None, None])
    assert net.calls == [("http://a/f0", 3.0), ("http://b/f0", 4.0), ("http://b/f1", 4.0)]


def test_offline_message_names_dataset_missing_files_folder_and_source(monkeypatch,
                                                                       tmp_path) -> None:
    """f0 downloads, f1 fails: downloads stop there; f0 and the present f3 are not named."""
    net = Net(monkeypatch, {"http://a/f0": PAYLOAD})
    folder = tmp_path / "ds"
    with pytest.raises(DataError) as e:
        dl.ensure_files("Tiny", folder, _files(4, source="the Tiny site"),
                        [None, None, None, folder / "f3"])
    assert [url for url, _ in net.calls] == ["http://a/f0", "http://a/f1"]
    assert str(e.value) == (
        f"Tiny is missing from {folder.resolve()} (f1, f2) and could not be downloaded "
        "(could not download f1: http://a/f1: [Errno 111] Connection refused). Get the files "
        "from the Tiny site and put them in that folder, or point --data-dir / D2L_DATA_DIR at "
        "a folder that holds ds/.")


@pytest.mark.parametrize("mirrors, source, named", [
    (("http://a", "http://b"), None, "http://a"),  # no source: the first mirror
    ((), None, "its publisher"),                   # neither
    ((), "kaggle.com/x", "kaggle.com/x"),
])
def test_offline_message_source_falls_back_to_the_first_mirror(mirrors, source, named,
                                                               monkeypatch, tmp_path) -> None:
    Net(monkeypatch, {})
    with pytest.raises(DataError) as e:
        dl.ensure_files("T", tmp_path, _files(1, mirrors, source), [None])
    assert f". Get the files from {named} and put them in that folder," in str(e.value)

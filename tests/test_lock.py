"""training.lock: one writer per folder (the unit behind the fault table's lock rows)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from d2l_lightning.training import lock as lock_module
from d2l_lightning.training.errors import ConfigError
from d2l_lightning.training.lock import LOCK_NAME, FolderLock, check_free, holder


@pytest.fixture
def held(tmp_path):
    """Another process holding ``tmp_path``'s lock; yields its pid."""
    env = {k: v for k, v in os.environ.items() if k != "MUTANT_UNDER_TEST"}
    code = ("import sys, time; from d2l_lightning.training.lock import FolderLock; "
            "FolderLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE,
                            text=True, env={**env, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline().strip() == "held"
    yield proc.pid
    proc.kill()
    proc.wait()


def test_the_lock_file_holds_exactly_the_writers_pid(tmp_path) -> None:
    (tmp_path / LOCK_NAME).write_text("99999999999\n")  # a longer pid from an earlier writer
    lock = FolderLock(tmp_path)
    lock.acquire()
    assert (tmp_path / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    assert holder(tmp_path) is None  # this process's own lock is free to it
    lock.acquire()  # a second acquire of the same lock changes nothing
    lock.release()
    assert lock.fd is None and holder(tmp_path) is None
    lock.acquire()  # and it can be taken again
    lock.release()


def test_acquire_refuses_a_held_folder_naming_the_pid(tmp_path, held) -> None:
    """The race check_free cannot see: the lock is taken between the check and the acquire."""
    assert holder(tmp_path) == str(held)
    for what in ("run", "sweep"):
        lock = FolderLock(tmp_path, what)
        with pytest.raises(ConfigError) as e:
            lock.acquire()
        assert str(e.value).startswith(f"{tmp_path} is in use by process {held}, which is "
                                       f"writing this {what};"), e.value
        assert lock.fd is None  # nothing kept open
    with pytest.raises(ConfigError) as e:
        check_free(tmp_path)  # the default: a run
    assert str(e.value).startswith(f"{tmp_path} is in use by process {held}, which is "
                                   "writing this run;"), e.value


def test_a_lock_without_a_readable_pid_names_another_process(tmp_path, held) -> None:
    (tmp_path / LOCK_NAME).write_bytes(b"\xff\xfe not a pid")  # the holder keeps its flock
    assert holder(tmp_path) == ""
    with pytest.raises(ConfigError, match="is in use by another process, which is writing "
                       "this run;"):
        FolderLock(tmp_path).acquire()  # the default: a run


def test_a_folder_without_a_lock_file_is_free_and_stays_untouched(tmp_path) -> None:
    assert holder(tmp_path) is None
    check_free(tmp_path)
    assert not (tmp_path / LOCK_NAME).exists()
    (tmp_path / LOCK_NAME).mkdir()  # something else by that name: not a lock
    assert holder(tmp_path) is None


def test_the_lock_file_is_created_readable(tmp_path) -> None:
    old = os.umask(0o022)
    try:
        lock = FolderLock(Path(tmp_path))
        lock.acquire()
        assert (tmp_path / LOCK_NAME).stat().st_mode & 0o777 == 0o644
        lock.release()
    finally:
        os.umask(old)


def test_without_fcntl_every_folder_is_free_and_nothing_is_written(tmp_path, monkeypatch) -> None:
    """A platform without ``fcntl`` (Windows): one writer is then the user's business."""
    (tmp_path / LOCK_NAME).write_text("123\n")  # a lock file left by a POSIX writer
    monkeypatch.setattr(lock_module, "fcntl", None)
    assert holder(tmp_path) is None
    check_free(tmp_path)
    lock = FolderLock(tmp_path)
    lock.acquire()
    assert lock.fd is None and (tmp_path / LOCK_NAME).read_text() == "123\n"
    lock.release()

"""Shared pieces of the download unit tests: a payload with its checksum, a stub network
(``urlopen`` and the monotonic clock) and the answers it gives."""

from __future__ import annotations

import hashlib
import urllib.error
from email.message import Message
from types import SimpleNamespace

import pytest

from d2l_lightning.datamodules import download as dl

PAYLOAD = b"\x1f\x8b" + bytes(range(256)) * 4100 + b"end"  # > 1 MiB: two read chunks
MD5 = "md5:" + hashlib.md5(PAYLOAD).hexdigest()
REFUSED = urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))
SILENT = urllib.error.URLError(TimeoutError("timed out"))


def not_found(url: str) -> urllib.error.HTTPError:
    return urllib.error.HTTPError(url, 404, "Not Found", Message(), None)


class Response:
    """What ``urlopen`` (or ``open``) gives: ``read(size)`` honours ``size`` (``read(0)`` is
    ``b""``) and is recorded in ``sizes``."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos, self.sizes = data, 0, []

    def read(self, size: int | None = -1) -> bytes:
        self.sizes.append(size)
        chunk = self.data[self.pos:] if size is None or size < 0 else \
            self.data[self.pos:self.pos + size]
        self.pos += len(chunk)
        return chunk

    def __enter__(self) -> Response:
        return self

    def __exit__(self, *exc) -> bool:
        return False


class Net:
    """A stub network: URL -> bytes or an exception, each answer costing ``cost[url]`` seconds
    of a fake monotonic clock; unknown URLs are refused. ``calls`` lists ``(url, timeout)``."""

    def __init__(self, monkeypatch, answers: dict, cost: dict | None = None) -> None:
        self.answers, self.cost, self.calls, self.now = answers, cost or {}, [], 1000.0
        monkeypatch.setattr(dl.urllib.request, "urlopen", self.urlopen)
        monkeypatch.setattr(dl, "time", SimpleNamespace(monotonic=lambda: self.now))

    def urlopen(self, url: str, timeout: float) -> Response:
        self.calls.append((url, timeout))
        self.now += self.cost.get(url, 0.0)
        answer = self.answers.get(url, REFUSED)
        if isinstance(answer, BaseException):
            raise answer
        return Response(answer)


@pytest.fixture(autouse=True)
def _no_timeout_setting(monkeypatch) -> None:
    monkeypatch.delenv(dl.TIMEOUT_ENV, raising=False)

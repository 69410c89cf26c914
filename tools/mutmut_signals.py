"""A pytest plugin for mutation runs: every test starts with a plain process's signal handlers.

mutmut's fork server ignores SIGINT and answers SIGTERM with ``os._exit(0)``, and the process it
forks for each mutant inherits both: a test that sends itself SIGTERM then ends the process with
exit 0 ("survived"), and one that sends Ctrl-C sees nothing. ``tools/mutation.py`` loads this
plugin (``-p tools.mutmut_signals``) so the fault callbacks' signal tests run as under pytest.
"""

from __future__ import annotations

import signal

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Python's own SIGINT handler and the default SIGTERM action, as in a fresh interpreter."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)

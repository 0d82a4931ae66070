"""urllib3's warning about missing SOCKS support stays silent even when another thread's
warnings.catch_warnings block dropped the filter that requests adds at import."""

from __future__ import annotations

import subprocess
import sys

# Imports urllib3.contrib.socks (PySocks is not installed) with the filters as they were before
# requests was imported, as a catch_warnings restore in another thread leaves them.
SCRIPT = """
import importlib, warnings
{setup}
saved = warnings.filters[:]
import requests
warnings.filters[:] = saved
try:
    importlib.import_module("urllib3.contrib.socks")
except ImportError:
    pass
"""


def run(setup: str) -> str:
    completed = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(setup=setup)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return completed.stderr


def test_socks_warning_silenced_by_stores() -> None:
    assert "SOCKS support" not in run("import agent.stores")


def test_socks_warning_shown_without_filter() -> None:
    # The race this guards against is real: without the filter the warning is printed.
    assert "SOCKS support" in run("")

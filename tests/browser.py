"""Debian's Chromium for the tests that drive a page (the evaluation report, the serve page)."""

import os
import shutil

import pytest

# headless, offline: no sandbox (root in CI), no GPU, none of the background connections a closed network refuses
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def chromium_path():
    """The Chromium executable; skips the test where there is none (fails under RETINAMASK_REQUIRE_BROWSER=1)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    message = "no Chromium on this machine (Debian: apt-get install chromium); .ci/run installs it"
    if os.environ.get("RETINAMASK_REQUIRE_BROWSER") == "1":
        pytest.fail(message)
    pytest.skip(message)

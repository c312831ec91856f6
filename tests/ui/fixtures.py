"""The browser tests' fixtures, imported by each module that drives the page: one Chromium
and one daemon (tests/ui/daemon.py) per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser

from ui.browser import Api, chromium
from ui.daemon import ui_daemon


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    with ui_daemon(tmp_path_factory.mktemp("ui")) as client:
        yield client


__all__ = ["api", "browser"]

"""Debian's Chromium under Playwright, pages that carry the API token, screenshots kept as
test artefacts, and the workflow files the tests submit."""

from __future__ import annotations

import base64
import json
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Browser, Locator, Page, sync_playwright

CHROMIUM = os.environ.get("AKB_CHROMIUM", "/usr/bin/chromium")
SHOTS = Path(os.environ.get("AKB_ARTIFACTS") or "/var/tmp/akb-ui-shots") / "ui"
"""Screenshots of every step; emptied when the first browser of a run starts, so it holds the
last run's (every module's)."""
_shots_emptied = False
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
TOKEN_KEY = "akobridge.token"


@contextmanager
def chromium() -> Iterator[Browser]:
    """The system Chromium (never a downloaded one: ``playwright install`` is not used)."""
    if not Path(CHROMIUM).exists():
        raise AssertionError(f"no Chromium at {CHROMIUM}: apt-get install -y chromium")
    global _shots_emptied
    SHOTS.mkdir(parents=True, exist_ok=True)
    if not _shots_emptied:
        for old in SHOTS.glob("*.png"):
            old.unlink()
        _shots_emptied = True
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Tab:
    """A page of the monitoring UI with the errors it raised and its screenshots."""

    page: Page
    base: str
    name: str
    errors: list[str] = field(default_factory=list)
    shots: list[Path] = field(default_factory=list)

    def open(self, route: str = "/") -> Page:
        self.page.goto(f"{self.base}/ui/#{route}")
        return self.page

    def shot(self, step: str, full_page: bool = False, page: Page | None = None) -> Path:
        """Save ``<test>-<n>-<step>.png`` (of ``page``, default this tab's) in the artefacts
        dir."""
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / f"{self.name}-{len(self.shots) + 1:02d}-{step}.png"
        (page or self.page).screenshot(path=str(path), full_page=full_page)
        self.shots.append(path)
        return path

    def requests_to(self, pattern: str) -> int:
        """How many requests the page made whose path matches ``pattern`` so far."""
        return sum(1 for u in self._urls if re.search(pattern, u))

    _urls: list[str] = field(default_factory=list)


@contextmanager
def tab(browser: Browser, base: str, name: str, token: str | None = None,
        viewport: dict[str, int] | None = None) -> Iterator[Tab]:
    """A fresh browser context (own sessionStorage) on the page; ``token`` is put in session
    storage before any script runs. Fails the test on any uncaught page error or console
    error other than a refused resource (a 401 before the token is given)."""
    ctx = browser.new_context(viewport=viewport or DESKTOP, accept_downloads=True)
    if token:
        ctx.add_init_script(
            f"sessionStorage.setItem({json.dumps(TOKEN_KEY)}, {json.dumps(token)})")
    page = ctx.new_page()
    page.set_default_timeout(15_000)
    t = Tab(page, base, name)
    page.on("pageerror", lambda exc: t.errors.append(f"page error: {exc}"))
    page.on("console", lambda m: t.errors.append(f"console: {m.text}")
            if m.type == "error" and "Failed to load resource" not in m.text else None)
    page.on("request", lambda r: t._urls.append(r.url))
    try:
        yield t
        assert not t.errors, t.errors
    finally:
        ctx.close()


def node(page: Page, name: str) -> Locator:
    """The graph's node of activity ``name``."""
    return page.locator(f"[data-testid=node][data-activity='{name}']")


# --- the API side ------------------------------------------------------------------------


def workflow_yaml(name: str, runtime: str, activities: list[dict[str, Any]]) -> str:
    lines = [f"name: {name}", "spec:", f"  runtime: {runtime}", "  activities:"]
    for a in activities:
        lines.append(f"    - name: {a['name']}")
        lines.append(f"      run: {json.dumps(a['run'])}")
        if a.get("dependsOn"):
            lines.append(f"      dependsOn: [{', '.join(a['dependsOn'])}]")
    return "\n".join(lines) + "\n"


def mesh(layers: int, width: int) -> list[dict[str, Any]]:
    """``root`` (sleeps), ``layers`` × ``width`` activities each after two of the layer
    before, and ``sink``: 2 + layers × width activities."""
    acts: list[dict[str, Any]] = [{"name": "root", "run": "sleep 600"}]
    for layer in range(layers):
        for i in range(width):
            deps = (["root"] if layer == 0 else
                    sorted({f"l{layer - 1}-{i:02d}", f"l{layer - 1}-{(i + 1) % width:02d}"}))
            acts.append({"name": f"l{layer}-{i:02d}", "run": "true", "dependsOn": deps})
    acts.append({"name": "sink", "run": "true",
                 "dependsOn": [f"l{layers - 1}-{i:02d}" for i in range(width)]})
    return acts


def with_webhook(text: str, url: str) -> str:
    return text.replace("spec:\n", f"spec:\n  webhooks:\n    - name: ui\n      url: {url}\n", 1)


@dataclass
class Api:
    """The daemon's HTTP API with the token."""

    url: str
    token: str

    def __post_init__(self) -> None:
        self.http = httpx.Client(base_url=self.url, timeout=30,
                                 headers={"Authorization": f"Bearer {self.token}"})

    def submit(self, text: str) -> int:
        r = self.http.post("/workflows", json={
            "workflow": base64.b64encode(text.encode()).decode()})
        assert r.status_code == 201, r.text
        return int(r.json()["id"])

    def workflow(self, wf_id: int) -> dict[str, Any]:
        r = self.http.get(f"/workflows/{wf_id}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    def activity(self, wf_id: int, name: str) -> dict[str, Any]:
        return next(a for a in self.workflow(wf_id)["activities"] if a["name"] == name)

    def wait(self, wf_id: int, check: Any, timeout: float = 60, what: str = "") -> Any:
        """Poll the workflow until ``check(wf)`` is truthy (the API side of a test)."""
        deadline = time.monotonic() + timeout
        while True:
            wf = self.workflow(wf_id)
            got = check(wf)
            if got:
                return got
            assert time.monotonic() < deadline, f"{what or 'condition'} not met: {wf}"
            time.sleep(0.2)

    def cancel(self, wf_id: int) -> None:
        self.http.post(f"/workflows/{wf_id}/cancel")


__all__ = ["DESKTOP", "PHONE", "SHOTS", "Api", "Tab", "chromium", "mesh", "node", "tab",
           "with_webhook", "workflow_yaml"]

"""The monitoring page at 1280 × 800, with the keyboard only, with a screen reader's names,
and its list following the event stream without polling: Debian's Chromium under Playwright
against a real daemon (the same recipe as tests/test_ui.py) on the local runtime.

Screenshots go to ``$AKB_ARTIFACTS/ui/`` beside tests/test_ui.py's."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect
from ui import fixtures
from ui.browser import DESKTOP, Api, mesh, node, tab, workflow_yaml
from ui.daemon import TOKEN

expect.set_options(timeout=15_000)
browser, api = fixtures.browser, fixtures.api  # one Chromium and one daemon for the module


def running(api: Api, wf_id: int, name: str) -> None:
    api.wait(wf_id, lambda wf: any(a["name"] == name and a["state"] == "RUNNING"
                                   for a in wf["activities"]), 30, f"{name} running")


@contextmanager
def work_then_next(api: Api, name: str, run: str = "sleep 600") -> Iterator[int]:
    """A local workflow ``work`` (running ``run``) → ``next`` once ``work`` runs; cancelled
    at the end."""
    wf_id = api.submit(workflow_yaml(name, "local", [
        {"name": "work", "run": run}, {"name": "next", "run": "true", "dependsOn": ["work"]}]))
    try:
        running(api, wf_id, "work")
        yield wf_id
    finally:
        api.cancel(wf_id)


def quiet(api: Api, timeout: float = 60) -> None:
    """No workflow of the daemon running (nothing left to send events about)."""
    deadline = time.monotonic() + timeout
    while api.http.get("/workflows", params={"state": "RUNNING"}).json()["total"]:
        assert time.monotonic() < deadline, "workflows still running"
        time.sleep(0.3)


# --- the list, live ----------------------------------------------------------------------

LIST_READS = r"/workflows(\?|$)"  # the list's page, not one workflow's detail


def test_the_list_follows_the_event_stream_without_polling(browser: Browser,
                                                           api: Api) -> None:
    quiet(api)
    with tab(browser, api.url, "live-list", token=TOKEN) as t:
        page = t.open("/?search=ui-live-list")
        expect(page.get_by_test_id("live")).to_have_attribute("data-status", "live")
        expect(page.get_by_test_id("empty")).to_be_visible()
        page.evaluate("window.__noReload = true")
        started, reads_before = time.monotonic(), t.requests_to(LIST_READS)
        wf_id = api.submit(workflow_yaml("ui-live-list", "local", [
            {"name": "first", "run": "sleep 3"},
            {"name": "second", "run": "sleep 1", "dependsOn": ["first"]}]))
        row = page.locator(f"[data-testid=workflow-row][data-id='{wf_id}']")
        expect(row).to_have_attribute("data-state", "RUNNING")  # created: shown live
        expect(row.get_by_test_id("state")).to_have_text("RUNNING")
        t.shot("running")
        expect(row).to_have_attribute("data-state", "COMPLETED", timeout=30_000)
        expect(row.get_by_test_id("state")).to_have_text("COMPLETED")
        expect(row.get_by_test_id("counts")).to_have_text("2 done")
        t.shot("completed")
        assert page.evaluate("window.__noReload") is True, "the page was reloaded"
        took = time.monotonic() - started
        reads = t.requests_to(LIST_READS) - reads_before
        # created, first running, second running, completed: a read per change at most,
        # never more than one a second
        assert 1 <= reads <= min(8, took + 1), f"{reads} list reads in {took:.1f} s"

        quiet(api)
        # the page's own clock (requests are only seen by the test while it waits on the
        # page: not during a time.sleep)
        page.wait_for_timeout(1500)  # the last debounced read (if one was due) is done
        idle_from = t.requests_to(LIST_READS)
        page.wait_for_timeout(6000)
        idle = t.requests_to(LIST_READS) - idle_from
        assert idle == 0, f"{idle} list reads in 6 s with nothing changing: polling"
        assert t.requests_to(r"/events$") == 1, "the event stream was reconnected"
        expect(row).to_have_attribute("data-state", "COMPLETED")


# --- 1280 × 800 --------------------------------------------------------------------------

OUTSIDE = """() => {
  const W = window.innerWidth, H = window.innerHeight;
  return [...document.querySelectorAll('[data-testid=node]')].filter((n) => {
    const b = n.querySelector('rect').getBoundingClientRect();
    return !b.width || b.left < 0 || b.top < 0 || b.right > W || b.bottom > H;
  }).map((n) => n.dataset.activity);
}"""


def graph_box(page: Page) -> dict[str, float]:
    return dict(page.get_by_test_id("dag").evaluate(
        "(svg) => { const b = svg.getBoundingClientRect();"
        " return {top: b.top, bottom: b.bottom, height: b.height}; }"))


@pytest.mark.parametrize("layers, width", [(3, 6), (9, 22)], ids=["20", "200"])
def test_fit_shows_every_node_on_a_1280x800_screen(browser: Browser, api: Api,
                                                   layers: int, width: int) -> None:
    acts = mesh(layers, width)
    wf_id = api.submit(workflow_yaml(f"ui-fit-{len(acts)}", "local", acts))
    try:
        running(api, wf_id, "root")
        with tab(browser, api.url, f"fit-{len(acts)}", token=TOKEN) as t:
            page = t.open(f"/workflows/{wf_id}")
            expect(page.get_by_test_id("node")).to_have_count(len(acts))
            expect(node(page, "root")).to_have_attribute("data-state", "RUNNING")
            box = graph_box(page)
            assert box["bottom"] <= DESKTOP["height"], f"the graph box ends below: {box}"
            assert box["height"] >= 300, f"the graph box is too small to use: {box}"
            page.get_by_test_id("zoom-in").click()  # away from fitted, then back
            page.get_by_test_id("zoom-fit").click()
            assert page.evaluate(OUTSIDE) == [], "nodes outside the screen after Fit"
            assert page.evaluate("window.scrollY") == 0
            t.shot("fitted")

            page.set_viewport_size({"width": 1280, "height": 680})  # a smaller window
            deadline = time.monotonic() + 5
            while graph_box(page)["bottom"] > 680:
                assert time.monotonic() < deadline, f"the box stays below: {graph_box(page)}"
                time.sleep(0.1)
            page.get_by_test_id("zoom-fit").click()
            assert page.evaluate(OUTSIDE) == [], "nodes outside a 1280 × 680 window"
    finally:
        api.cancel(wf_id)


# --- the keyboard only -------------------------------------------------------------------


FOCUS_RING = "rgb(179, 89, 0)"  # --focus in style.css


def focused(page: Page, selector: str) -> bool:
    return bool(page.evaluate("(s) => !!document.activeElement"
                              " && document.activeElement.matches(s)", selector))


def tab_to(page: Page, selector: str, limit: int = 40) -> int:
    """Press Tab until the focused element matches ``selector``; how many presses."""
    for presses in range(1, limit + 1):
        page.keyboard.press("Tab")
        if focused(page, selector):
            return presses
    active = page.evaluate("document.activeElement && document.activeElement.outerHTML")
    raise AssertionError(f"{selector} not reached in {limit} Tabs; at {active!r:.200}")


def view_box(page: Page) -> list[float]:
    return [float(x) for x in (page.get_by_test_id("dag").get_attribute("viewBox") or
                               "").split()]


def test_the_keyboard_alone_reaches_a_workflow_an_activity_and_closes_a_dialog(
        browser: Browser, api: Api) -> None:
    with work_then_next(api, "ui-keys") as wf_id, \
            tab(browser, api.url, "keyboard", token=TOKEN) as t:
        page = t.open("/")
        expect(page.get_by_test_id("workflow-row").first).to_be_visible()
        page.keyboard.press("Tab")  # the skip link comes first, and shows
        assert focused(page, "a.skip")
        expect(page.locator("a.skip")).to_be_in_viewport()
        t.shot("skip-link")
        page.keyboard.press("Enter")
        assert focused(page, "main"), "the skip link did not move the focus"
        expect(page.get_by_role("heading", name="Workflows")).to_be_visible()
        assert page.evaluate("location.hash") in ("", "#/")
        page.keyboard.press("Tab")  # the first thing in the content: the filters
        assert focused(page, "[data-testid=filter-state]")
        page.keyboard.press("Tab")
        assert focused(page, "[data-testid=filter-search]")
        page.keyboard.type("ui-keys")
        expect(page.get_by_test_id("workflow-row")).to_have_count(1)
        tab_to(page, f"[data-testid=workflow-row][data-id='{wf_id}'] a")
        page.keyboard.press("Enter")

        expect(page.get_by_test_id("workflow-name")).to_have_text("ui-keys")
        expect(page.get_by_test_id("node")).to_have_count(2)
        assert focused(page, "main"), "the focus was left behind on the old view"
        presses = tab_to(page, "[data-testid=dag]")
        assert presses <= 12, f"{presses} Tabs from the top of the workflow to its graph"
        page.keyboard.press("0")
        fitted = view_box(page)
        page.keyboard.press("+")
        assert view_box(page)[2] < fitted[2], "+ did not zoom in"
        page.keyboard.press("-")
        page.keyboard.press("-")
        assert view_box(page)[2] > fitted[2], "- did not zoom out"
        page.keyboard.press("0")
        assert view_box(page) == pytest.approx(fitted, abs=0.11), "0 did not fit"
        for key, axis, sign in [("ArrowRight", 0, 1), ("ArrowLeft", 0, -1),
                                ("ArrowDown", 1, 1), ("ArrowUp", 1, -1)]:
            before = view_box(page)[axis]
            page.keyboard.press(key)
            assert (view_box(page)[axis] - before) * sign > 0, f"{key} did not pan"
        t.shot("graph-focused")
        tab_to(page, "[data-testid=node][data-activity=work]", limit=3)
        ring = node(page, "work").locator("rect").evaluate(
            "(r) => getComputedStyle(r).stroke")
        assert ring == FOCUS_RING, f"the focused node does not show it: stroke {ring}"
        t.shot("node-focused")
        page.keyboard.press("Enter")

        expect(page.get_by_test_id("activity-name")).to_have_text("work")
        expect(page.get_by_test_id("activity-state")).to_have_text("RUNNING")
        assert focused(page, "main")
        tab_to(page, "[data-testid=cancel-activity]")
        page.keyboard.press("Enter")
        dialog = page.get_by_test_id("confirm-dialog")
        expect(dialog).to_be_visible()
        assert focused(page, "[data-testid=confirm-no]"), "the safe answer is not focused"
        t.shot("confirm")
        page.keyboard.press("Escape")
        expect(dialog).to_be_hidden()
        expect(page.get_by_test_id("cancel-activity")).to_be_enabled()
        assert focused(page, "[data-testid=cancel-activity]"), "focus lost after Escape"
        time.sleep(1)
        assert api.activity(wf_id, "work")["state"] == "RUNNING", "Escape cancelled it"
        expect(page.get_by_test_id("activity-state")).to_have_text("RUNNING")
        page.keyboard.press("Shift+Tab")  # and back the way it came
        page.keyboard.press("Enter")  # the crumb to the workflow
        expect(page.get_by_test_id("workflow-name")).to_have_text("ui-keys")


# --- names -------------------------------------------------------------------------------

CONTROLS = ("a[href], button, input, select, textarea, summary, [role=button], [role=tab], "
            "[tabindex]:not([tabindex='-1'])")


def controls(page: Page) -> tuple[list[str], list[str]]:
    """Every control the accessibility tree exposes (not hidden, not inert) as
    ``role "name"``, and those without a name, from Chromium's own computation."""
    cdp = page.context.new_cdp_session(page)
    try:
        root = cdp.send("DOM.getDocument", {"depth": 0})["root"]["nodeId"]
        ids = cdp.send("DOM.querySelectorAll", {"nodeId": root, "selector": CONTROLS})
        named: list[str] = []
        nameless: list[str] = []
        for nid in ids["nodeIds"]:
            got: list[dict[str, Any]] = cdp.send("Accessibility.getPartialAXTree", {
                "nodeId": nid, "fetchRelatives": False})["nodes"]
            if not got or got[0].get("ignored"):
                continue
            role = got[0].get("role", {}).get("value", "?")
            name = str(got[0].get("name", {}).get("value", "")).strip()
            if name:
                named.append(f'{role} "{name}"')
            else:
                html = cdp.send("DOM.getOuterHTML", {"nodeId": nid})["outerHTML"]
                nameless.append(f"{role}: {html[:160]}")
        return named, nameless
    finally:
        cdp.detach()


def all_named(page: Page, where: str, expected: list[str]) -> list[str]:
    named, nameless = controls(page)
    assert not nameless, f"{where}: controls without an accessible name: {nameless}"
    for want in expected:
        assert any(re.fullmatch(want, n) for n in named), f"{where}: no {want} in {named}"
    return named


def test_every_control_has_an_accessible_name(browser: Browser, api: Api) -> None:
    with work_then_next(api, "ui-names", "echo out; sleep 600") as wf_id, \
            tab(browser, api.url, "names", token=TOKEN) as t:
        page = t.open("/?search=ui-names")
        expect(page.get_by_test_id("workflow-row")).to_have_count(1)
        all_named(page, "list", [
            r'link "Skip to content"', r'button "Token"', r'combobox "State.*"',
            r'(searchbox|combobox) "Name.*"', r'(searchbox|combobox) "Cluster.*"',
            r'link "ui-names"', r'button "← Previous"', r'button "Next →"'])
        expect(page.get_by_label("State")).to_have_value("")
        expect(page.get_by_label("Name")).to_have_value("ui-names")

        page = t.open(f"/workflows/{wf_id}")
        expect(page.get_by_test_id("node")).to_have_count(2)
        all_named(page, "workflow graph", [
            r'button "Cancel workflow"', r'link "Files"', r'button "Graph"',
            r'button "List"', r'button "zoom in"', r'button "zoom out"',
            r'button "fit the whole graph"', r'.* "graph of 2 activities"',
            r'link "activity work, RUNNING"', r'link "activity next, PENDING"'])
        page.get_by_role("button", name="List").click()
        expect(page.get_by_test_id("activity-row")).to_have_count(2)
        all_named(page, "workflow list", [
            r'combobox "State.*"', r'(searchbox|combobox) "Name.*"', r'link "work"'])
        page.get_by_role("button", name="Cancel workflow").click()
        expect(page.get_by_test_id("confirm-dialog")).to_be_visible()
        named = all_named(page, "the confirmation", [
            r'button "Cancel the workflow"', r'button "No, keep it"'])
        assert len(named) == 2, f"controls outside the open dialog: {named}"
        page.keyboard.press("Escape")

        page = t.open(f"/workflows/{wf_id}/activities/work")
        expect(page.get_by_test_id("log")).to_contain_text("out")
        all_named(page, "activity", [
            r'link "Workflows"', r'link "#\d+"', r'button "Cancel activity"',
            r'combobox "Attempt.*"', r'tab "stdout"', r'tab "stderr"',
            r'.* "job output"', r'.* "job script"', r'.* "command file"'])
        t.shot("activity")
        page.get_by_role("button", name="Token").click()
        expect(page.get_by_test_id("token-dialog")).to_be_visible()
        all_named(page, "the token dialog", [
            r'textbox "Token.*"', r'button "Use this token"', r'button "Cancel"'])
        page.keyboard.press("Escape")
        expect(page.get_by_test_id("token-dialog")).to_be_hidden()

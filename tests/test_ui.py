"""The monitoring page (/ui/) in Debian's Chromium under Playwright, against a real daemon
with a token, on the real test Slurm and on the local runtime.

Screenshots of every step go to ``$AKB_ARTIFACTS`` (default ``/var/tmp/akb-ui-shots``)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect
from test_peak_executions_api import definition
from ui import fixtures
from ui.browser import PHONE, Api, mesh, node, tab, with_webhook, workflow_yaml
from ui.daemon import TOKEN
from ui.proxy import cuttable

from conftest import Receiver, slurm_env

expect.set_options(timeout=15_000)
browser, api = fixtures.browser, fixtures.api  # one Chromium and one daemon for the module


def squeue_ids() -> set[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i"], env=slurm_env(), text=True,
                         capture_output=True, check=True).stdout
    return set(out.split())


def leaves_squeue(job: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while job in squeue_ids():
        assert time.monotonic() < deadline, f"job {job} still in squeue"
        time.sleep(0.3)


# --- auth --------------------------------------------------------------------------------


def test_the_page_asks_for_the_token_and_keeps_it_for_the_tab(browser: Browser,
                                                              api: Api) -> None:
    api.submit(workflow_yaml("ui-token-check", "local", [{"name": "only", "run": "true"}]))
    with tab(browser, api.url, "token") as t:
        page = t.open("/")
        dialog = page.get_by_test_id("token-dialog")
        expect(dialog).to_be_visible()
        expect(page.get_by_test_id("workflow-row")).to_have_count(0)
        t.shot("asks-for-the-token")
        page.get_by_test_id("token-input").fill("not-the-token")
        page.get_by_test_id("token-submit").click()
        expect(page.locator("#token-why")).to_contain_text("refused")
        expect(page.get_by_test_id("workflow-row")).to_have_count(0)
        page.get_by_test_id("token-input").fill(TOKEN)
        page.keyboard.press("Enter")
        expect(dialog).to_be_hidden()
        expect(page.get_by_test_id("workflow-row").first).to_be_visible()
        expect(page.get_by_test_id("live")).to_have_attribute("data-status", "live")
        assert page.evaluate("sessionStorage.getItem('akobridge.token')") == TOKEN
        t.shot("list-after-the-token")
        page.reload()
        expect(page.get_by_test_id("workflow-row").first).to_be_visible()
        expect(dialog).to_be_hidden()


# --- on the real Slurm -------------------------------------------------------------------

LINES = 16


@pytest.mark.slurm
def test_a_running_workflow_on_slurm_live_dag_and_a_growing_log(
        browser: Browser, api: Api, slurm_cluster: Path) -> None:
    wf_id = api.submit(workflow_yaml("ui-live", "devslurm", [
        {"name": "writer", "run": f"for i in $(seq 1 {LINES}); do echo line-$i; sleep 0.5; done"},
        {"name": "after", "run": "sleep 1; echo after", "dependsOn": ["writer"]},
        {"name": "last", "run": "echo last", "dependsOn": ["after"]}]))
    with tab(browser, api.url, "slurm-live", token=TOKEN) as t:
        page = t.open("/")
        row = page.locator(f"[data-testid=workflow-row][data-id='{wf_id}']")
        expect(row).to_have_attribute("data-state", "RUNNING")
        expect(row.get_by_test_id("state")).to_have_text("RUNNING")
        t.shot("list-running")
        row.get_by_test_id("workflow-link").click()
        expect(page.get_by_test_id("node")).to_have_count(3)
        expect(node(page, "writer")).to_have_attribute("data-state", "RUNNING", timeout=30_000)
        expect(node(page, "writer")).to_contain_text("RUNNING")  # the state as text too
        expect(node(page, "last")).to_have_attribute("data-state", "PENDING")
        page.evaluate("window.__noReload = true")
        t.shot("dag-running")

        logs = page.context.new_page()  # the DAG stays open in the first tab
        logs.goto(f"{api.url}/ui/#/workflows/{wf_id}/activities/writer")
        log = logs.get_by_test_id("log")
        expect(log).to_contain_text("line-2", timeout=20_000)
        early = log.inner_text()
        assert f"line-{LINES}" not in early, "the log was complete already: nothing followed"
        expect(logs.get_by_test_id("log-status")).to_have_attribute("data-final", "false")
        t.shot("log-following", page=logs)
        expect(log).to_contain_text(f"line-{LINES}", timeout=30_000)
        expect(logs.get_by_test_id("log-status")).to_have_attribute("data-final", "true")
        assert log.inner_text().split() == [f"line-{i}" for i in range(1, LINES + 1)]
        job = api.activity(wf_id, "writer")["job_id"]
        assert job and job.isdigit()  # a Slurm job id
        expect(logs.get_by_test_id("attempt-job")).to_have_text(job)
        expect(logs.get_by_test_id("script")).to_contain_text("#SBATCH")
        expect(logs.get_by_test_id("command")).to_contain_text("echo line-$i")

        for name in ("writer", "after", "last"):  # changed in place, live
            expect(node(page, name)).to_have_attribute("data-state", "COMPLETED",
                                                       timeout=40_000)
        expect(page.get_by_test_id("workflow-state")).to_have_text("COMPLETED")
        assert page.evaluate("window.__noReload") is True
        detail_reads = t.requests_to(rf"/workflows/{wf_id}$")
        assert detail_reads <= 15, f"{detail_reads} reads of the workflow: a polling storm"
        t.shot("dag-completed")
        logs.reload()  # MaxRSS/CPU come from sacct a few seconds after the end
        expect(logs.get_by_test_id("activity-state")).to_have_text("COMPLETED")
        t.shot("activity", full_page=True, page=logs)


@pytest.mark.slurm
def test_cancel_a_workflow_on_slurm_its_jobs_leave_squeue(
        browser: Browser, api: Api, slurm_cluster: Path) -> None:
    wf_id = api.submit(workflow_yaml("ui-cancel", "devslurm", [
        {"name": "long1", "run": "sleep 300"}, {"name": "long2", "run": "sleep 300"},
        {"name": "then", "run": "true", "dependsOn": ["long1", "long2"]}]))
    jobs = api.wait(wf_id, lambda wf: (lambda j: j if len(j) == 2 else None)(
        [a["job_id"] for a in wf["activities"] if a["state"] == "RUNNING"]), 40, "both run")
    assert jobs == [api.activity(wf_id, "long1")["job_id"], api.activity(wf_id, "long2")["job_id"]]
    assert set(jobs) <= squeue_ids()
    with tab(browser, api.url, "slurm-cancel", token=TOKEN) as t:
        page = t.open(f"/workflows/{wf_id}/activities/long1")  # one activity first
        expect(page.get_by_test_id("activity-state")).to_have_text("RUNNING")
        page.get_by_test_id("cancel-activity").click()
        expect(page.locator("#confirm-text")).to_contain_text(f"its job {jobs[0]} is stopped")
        page.get_by_test_id("confirm-yes").click()
        expect(page.get_by_test_id("activity-state")).to_have_text("CANCELLED", timeout=30_000)
        expect(page.get_by_test_id("cancel-activity")).to_have_count(0)
        t.shot("activity-cancelled")
        leaves_squeue(jobs[0])
        assert jobs[1] in squeue_ids()

        page.get_by_test_id("back-to-workflow").click()
        expect(node(page, "long1")).to_have_attribute("data-state", "CANCELLED")
        expect(node(page, "then")).to_have_attribute("data-state", "SKIPPED")
        expect(node(page, "long2")).to_have_attribute("data-state", "RUNNING")
        page.get_by_test_id("cancel-workflow").click()
        expect(page.get_by_test_id("confirm-dialog")).to_be_visible()
        expect(page.locator("#confirm-text")).to_contain_text(
            "1 unfinished activity will be cancelled, 1 of them with a job")
        t.shot("confirm-cancel")
        page.get_by_test_id("confirm-no").click()  # asked, refused: nothing happens
        expect(page.get_by_test_id("confirm-dialog")).to_be_hidden()
        assert api.workflow(wf_id)["state"] == "RUNNING"
        page.get_by_test_id("cancel-workflow").click()
        page.get_by_test_id("confirm-yes").click()
        expect(node(page, "long2")).to_have_attribute("data-state", "CANCELLED",
                                                      timeout=30_000)
        expect(page.get_by_test_id("workflow-state")).to_have_text("CANCELLED")
        expect(page.get_by_test_id("cancel-workflow")).to_have_count(0)
        t.shot("cancelled")
    leaves_squeue(jobs[1])


@pytest.mark.slurm
def test_retry_a_failed_activity_on_slurm(browser: Browser, api: Api, slurm_cluster: Path,
                                          tmp_path: Path) -> None:
    marker = tmp_path / "tried-once"
    flaky = (f"if [ -e {marker} ]; then echo second-try; "
             f"else touch {marker}; echo first-try >&2; exit 3; fi")
    wf_id = api.submit(workflow_yaml("ui-retry", "devslurm", [
        {"name": "flaky", "run": flaky},
        {"name": "child", "run": "echo child", "dependsOn": ["flaky"]}]))
    with tab(browser, api.url, "slurm-retry", token=TOKEN) as t:
        page = t.open(f"/workflows/{wf_id}")
        expect(node(page, "flaky")).to_have_attribute("data-state", "FAILED", timeout=40_000)
        expect(node(page, "child")).to_have_attribute("data-state", "SKIPPED")
        expect(page.get_by_test_id("workflow-state")).to_have_text("FAILED")
        t.shot("failed")
        retry = page.get_by_test_id("retry-workflow")
        expect(retry).to_have_text("Retry 2 failed")
        retry.click()
        page.get_by_test_id("confirm-yes").click()
        expect(node(page, "flaky")).to_have_attribute("data-state", "COMPLETED", timeout=40_000)
        expect(node(page, "child")).to_have_attribute("data-state", "COMPLETED", timeout=40_000)
        expect(page.get_by_test_id("workflow-state")).to_have_text("COMPLETED")
        t.shot("retried")
        node(page, "flaky").click()
        rows = page.get_by_test_id("attempt-row")
        expect(rows).to_have_count(2)
        expect(rows.nth(0)).to_have_attribute("data-state", "FAILED")
        expect(rows.nth(0)).to_contain_text("3")
        expect(rows.nth(1)).to_have_attribute("data-state", "COMPLETED")
        expect(page.get_by_test_id("log")).to_have_text("second-try")
        page.get_by_test_id("attempt-pick").select_option("1")
        page.get_by_test_id("tab-err").click()
        expect(page.get_by_test_id("log")).to_have_text("first-try")
        t.shot("attempts", full_page=True)


# --- on the local runtime ----------------------------------------------------------------


def test_list_filters_and_files_on_local(browser: Browser, api: Api) -> None:
    ok = api.submit(workflow_yaml("ui-filter-alpha", "local", [
        {"name": "write", "run": "echo some-data > result.txt"}]))
    bad = api.submit(workflow_yaml("ui-filter-beta", "local", [
        {"name": "fail", "run": "exit 4"}]))
    for wf_id in (ok, bad):
        api.wait(wf_id, lambda wf: wf["state"] != "RUNNING", 30, "finished")
    with tab(browser, api.url, "local-list", token=TOKEN) as t:
        page = t.open("/")
        rows = page.get_by_test_id("workflow-row")
        page.get_by_test_id("filter-search").fill("UI-FILTER")
        expect(rows).to_have_count(2)
        page.get_by_test_id("filter-state").select_option("FAILED")
        expect(rows).to_have_count(1)
        expect(rows.first).to_have_attribute("data-id", str(bad))
        expect(rows.first.get_by_test_id("counts")).to_contain_text("1 failed")
        t.shot("filtered")
        page.get_by_test_id("filter-runtime").fill("devslurm")
        expect(page.get_by_test_id("empty")).to_be_visible()
        page.get_by_test_id("filter-runtime").fill("local")
        page.get_by_test_id("filter-state").select_option("")
        expect(rows).to_have_count(2)
        assert "search=UI-FILTER" in page.url and "runtime=local" in page.url
        page.reload()  # the filters live in the address
        expect(rows).to_have_count(2)
        expect(page.get_by_test_id("filter-search")).to_have_value("UI-FILTER")

        page.locator(f"[data-testid=workflow-row][data-id='{ok}'] a").click()
        page.get_by_test_id("artifacts-link").click()
        files = page.get_by_test_id("artifact-row")
        expect(files.first).to_be_visible()
        page.get_by_test_id("artifact-filter").fill("result.txt")
        expect(files).to_have_count(1)
        t.shot("files")
        with page.expect_download() as got:
            files.first.get_by_test_id("download").click()
        saved = got.value
        assert saved.suggested_filename == "result.txt"
        assert Path(saved.path()).read_text() == "some-data\n"


def test_a_dead_webhook_redelivered(browser: Browser, api: Api, receiver: Receiver) -> None:
    receiver.fail_first = 1  # webhooks.attempts is 1: the first post dies at once
    wf_id = api.submit(with_webhook(workflow_yaml("ui-hook", "local", [
        {"name": "one", "run": "true"}]), receiver.url))
    api.wait(wf_id, lambda wf: wf["state"] == "COMPLETED", 30, "completed")
    deadline = time.monotonic() + 20
    while not [d for d in api.http.get("/webhooks/dead").json() if d["workflow_id"] == wf_id]:
        assert time.monotonic() < deadline, "no dead letter"
        time.sleep(0.2)
    with tab(browser, api.url, "dead-webhook", token=TOKEN) as t:
        page = t.open("/webhooks")
        row = page.get_by_test_id("dead-row").first
        expect(row).to_contain_text("ACTIVITY_COMPLETED")
        t.shot("dead")
        row.get_by_test_id("redeliver").click()
        expect(page.get_by_test_id("confirm-dialog")).to_be_visible()
        page.get_by_test_id("confirm-yes").click()
        expect(page.get_by_test_id("toast")).to_contain_text("queued")
        expect(page.get_by_test_id("dead-row")).to_have_count(0)
        t.shot("redelivered")
    got = receiver.wait_for(2, timeout=20)
    assert [r.body["type"] for r in got] == ["ACTIVITY_COMPLETED", "WORKFLOW_DONE"]


def test_peak_definitions_executions_steps_and_logs(browser: Browser, api: Api) -> None:
    peak = "/workflows/api/v1/workflows"
    r = api.http.post(f"{peak}/", json=definition("ui-peak", {
        "hello": {"command": "echo peak-hello-1; echo peak-hello-2"},
        "bye": {"command": "echo bye", "parents": ["hello"]}}))
    assert r.status_code == 200, r.text
    def_id = r.json()["id"]
    r = api.http.post(f"{peak}/{def_id}/execute", json={})
    assert r.status_code == 200, r.text
    ex = r.json()["executionId"]
    with tab(browser, api.url, "peak", token=TOKEN) as t:
        page = t.open("/peak")
        page.locator(f"[data-testid=peak-row][data-id='{def_id}'] a").first.click()
        exrow = page.locator(f"[data-testid=execution-row][data-id='{ex}']")
        expect(exrow).to_have_attribute("data-status", "Success", timeout=40_000)
        t.shot("executions")
        exrow.locator("a").click()
        steps = page.get_by_test_id("step-row")
        expect(steps).to_have_count(2)
        expect(page.locator("[data-testid=step-row][data-step=hello]")).to_have_attribute(
            "data-status", "Success")
        page.get_by_role("button", name="log of hello").click()
        expect(page.get_by_test_id("step-log")).to_have_text("peak-hello-1\npeak-hello-2")
        expect(page.get_by_test_id("step-log-status")).to_have_attribute("data-final", "true")
        t.shot("step-log", full_page=True)


def test_the_event_stream_reconnects_and_the_list_catches_up(browser: Browser,
                                                            api: Api) -> None:
    with cuttable(api.url) as proxy, tab(browser, proxy.url, "reconnect", token=TOKEN) as t:
        page = t.open("/?search=ui-reconnect")
        live = page.get_by_test_id("live")
        expect(live).to_have_attribute("data-status", "live")
        expect(page.get_by_test_id("empty")).to_be_visible()
        proxy.cut()  # the network drops: the stream ends, reconnecting fails for a while
        expect(live).to_have_attribute("data-status", "reconnecting")
        wf_id = api.submit(workflow_yaml("ui-reconnect", "local", [
            {"name": "one", "run": "true"}]))
        api.wait(wf_id, lambda wf: wf["state"] == "COMPLETED", 30, "completed")
        t.shot("cut-off")
        expect(page.get_by_test_id("workflow-row")).to_have_count(0)  # missed it
        proxy.resume()  # back (after a backoff): the visible list is read again
        expect(live).to_have_attribute("data-status", "live", timeout=20_000)
        row = page.locator(f"[data-testid=workflow-row][data-id='{wf_id}']")
        expect(row).to_have_attribute("data-state", "COMPLETED")
        t.shot("caught-up")
        assert t.requests_to(r"/events$") >= 2


def test_a_phone_sized_viewport(browser: Browser, api: Api) -> None:
    wf_id = api.submit(workflow_yaml("ui-phone-with-a-rather-long-workflow-name", "local", [
        {"name": "first", "run": "echo one"},
        {"name": "second", "run": "echo two", "dependsOn": ["first"]}]))
    api.wait(wf_id, lambda wf: wf["state"] == "COMPLETED", 30, "completed")
    with tab(browser, api.url, "phone", token=TOKEN, viewport=PHONE) as t:
        for step, route, ready in [
                ("list", "/", "workflow-row"), ("workflow", f"/workflows/{wf_id}", "node"),
                ("activity", f"/workflows/{wf_id}/activities/second", "attempt-row")]:
            page = t.open(route)
            expect(page.get_by_test_id(ready).first).to_be_visible()
            wide = page.evaluate("document.documentElement.scrollWidth")
            assert wide <= PHONE["width"], f"{route}: {wide} px wide on a 390 px screen"
            t.shot(step)
        expect(page.get_by_test_id("log")).to_have_text("two")


def test_a_200_activity_graph_and_a_2000_activity_list(browser: Browser, api: Api) -> None:
    mid = api.submit(workflow_yaml("ui-graph-200", "local", mesh(9, 22)))
    big = api.submit(workflow_yaml("ui-list-2000", "local", [
        {"name": "root", "run": "sleep 600"},
        *({"name": f"leaf-{i:04d}", "run": "true", "dependsOn": ["root"]}
          for i in range(1999))]))
    for wf_id in (mid, big):
        api.wait(wf_id, lambda wf: any(a["state"] == "RUNNING" for a in wf["activities"]),
                 30, "root running")
    try:
        with tab(browser, api.url, "big", token=TOKEN) as t:
            page = t.open("/")
            expect(page.get_by_test_id("workflow-row").first).to_be_visible()
            t.shot("list-all")
            page = t.open(f"/workflows/{mid}")
            expect(page.get_by_test_id("node")).to_have_count(200)
            expect(node(page, "root")).to_have_attribute("data-state", "RUNNING")
            expect(node(page, "sink")).to_have_attribute("data-state", "PENDING")
            svg = page.get_by_test_id("dag")
            page.wait_for_function(  # it starts readable: nodes at least 30 px tall
                "document.querySelector('[data-testid=node][data-activity=root] rect')"
                ".getBoundingClientRect().height >= 30")
            page.get_by_test_id("zoom-fit").click()
            fitted = svg.get_attribute("viewBox")
            t.shot("graph-200-whole")
            page.get_by_test_id("zoom-in").click()
            page.get_by_test_id("zoom-in").click()
            zoomed = svg.get_attribute("viewBox")
            assert fitted and zoomed and float(zoomed.split()[2]) < float(fitted.split()[2])
            page.get_by_test_id("zoom-fit").click()
            assert svg.get_attribute("viewBox") == fitted
            page.reload()
            expect(node(page, "root")).to_be_in_viewport()
            t.shot("graph-200-start")
            node(page, "sink").focus()  # nodes are links: keyboard reaches them
            page.keyboard.press("Enter")
            expect(page.get_by_test_id("activity-name")).to_have_text("sink")

            started = time.monotonic()
            page = t.open(f"/workflows/{big}")
            rows = page.get_by_test_id("activity-row")
            expect(rows).to_have_count(100)
            took = time.monotonic() - started
            assert took < 10, f"the 2,000-activity workflow took {took:.1f} s to open"
            expect(page.get_by_test_id("node")).to_have_count(0)
            expect(page.get_by_test_id("draw-graph")).to_be_visible()
            expect(page.get_by_test_id("page-info")).to_contain_text("2000 in all")
            expect(page.get_by_test_id("workflow-head")).to_contain_text("1999 pending")
            t.shot("list-2000")
            page.get_by_test_id("activity-filter-state").select_option("running")
            expect(rows).to_have_count(1)
            expect(rows.first).to_have_attribute("data-activity", "root")
            page.get_by_test_id("activity-filter-state").select_option("")
            page.get_by_test_id("activity-filter-search").fill("leaf-1")
            expect(page.get_by_test_id("page-info")).to_contain_text("999 in all")
            page.get_by_test_id("page-next").click()
            expect(page.get_by_test_id("page-info")).to_contain_text("page 2 of 10")
    finally:  # the module's teardown waits for them to end
        for wf_id in (mid, big):
            api.cancel(wf_id)

"""What the monitoring page reads from a real daemon: the workflow list with activity counts,
name search and durations, an attempt's rendered job script, and the page's static files
served without a token while every data route still needs one."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import httpx
from daemon_helpers import running_daemon

TOKEN = "ui-t0ken-" + "y" * 24


def _wf(name: str, n: int, command: str = "true") -> dict[str, str]:
    acts = "".join(f"    - name: step{i}\n      run: {command!r}\n" for i in range(n))
    text = f"name: {name}\nspec:\n  runtime: local\n  activities:\n{acts}"
    return {"workflow": base64.b64encode(text.encode()).decode()}


def _until_done(client: httpx.Client, wf_id: int, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        wf = client.get(f"/workflows/{wf_id}").json()
        if wf["state"] != "RUNNING":
            return wf
        time.sleep(0.1)
    raise AssertionError(f"workflow {wf_id} still running after {timeout} s")


def one_summary_keys(detail: dict) -> list[str]:
    """The summary fields of a workflow's detail (all but its activities and counts)."""
    return [k for k in detail if k not in ("activities", "counts")]


def test_list_counts_search_duration_and_script(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as d, httpx.Client(base_url=d.url, timeout=10) as c:
        ids = {}
        for name, n, cmd in [("Alpha-run", 3, "true"), ("beta", 2, "exit 3"),
                             ("gamma-ALPHA", 1, "echo hi")]:
            r = c.post("/workflows", json=_wf(name, n, cmd))
            assert r.status_code == 201, r.text
            ids[name] = r.json()["id"]
        for wf_id in ids.values():
            _until_done(c, wf_id)

        page = c.get("/workflows").json()
        by_name = {w["name"]: w for w in page["items"]}
        assert by_name["Alpha-run"]["states"] == {"COMPLETED": 3}
        assert by_name["Alpha-run"]["counts"]["done"] == 3
        assert by_name["Alpha-run"]["activities"] == 3
        assert sum(by_name["beta"]["states"].values()) == 2
        assert by_name["beta"]["states"]["FAILED"] == 2 and by_name["beta"]["counts"]["failed"] == 2
        for w in page["items"]:
            assert w["duration_s"] is not None and 0 <= w["duration_s"] < 60
            one = c.get(f"/workflows/{w['id']}").json()  # the summary fields, read the same way
            assert {k: one[k] for k in w if k not in ("duration_s", "activities", "states")} == {
                k: v for k, v in w.items() if k not in ("duration_s", "activities", "states")}

        found = c.get("/workflows", params={"search": "alpha"}).json()
        assert found["total"] == 2
        assert {w["name"] for w in found["items"]} == {"Alpha-run", "gamma-ALPHA"}
        assert c.get("/workflows", params={"search": "nothing-like-it"}).json()["total"] == 0
        assert c.get("/workflows", params={"search": "a", "limit": 1}).json()["total"] == 3

        whole = c.get(f"/workflows/{ids['beta']}").json()
        one = c.get(f"/workflows/{ids['beta']}/activities/step1").json()
        assert one.pop("workflow") == {k: whole[k] for k in one_summary_keys(whole)}
        assert one == next(a for a in whole["activities"] if a["name"] == "step1")
        assert one["attempts"][0]["exit_code"] == 3
        r = c.get(f"/workflows/{ids['beta']}/activities/nope")
        assert r.status_code == 404 and r.json()["detail"][0]["field"] == "name"

        r = c.get(f"/workflows/{ids['gamma-ALPHA']}/activities/step0/script")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["attempt"] == 1 and body["cluster"] == "local"
        assert body["script"].startswith("#!") and "echo hi" in (body["command"] or "")
        assert c.get(f"/workflows/{ids['gamma-ALPHA']}/activities/step0/script",
                     params={"attempt": 9}).json()["detail"][0]["field"] == "attempt"
        r = c.get(f"/workflows/{ids['gamma-ALPHA']}/activities/nope/script")
        assert r.status_code == 404 and r.json()["detail"][0]["field"] == "name"


def test_the_page_loads_without_a_token_but_its_data_does_not(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKEN + "\n")
    tokens.chmod(0o600)
    config = {"api": {"allow_loopback_without_token": False, "token_file": str(tokens)}}
    # running_daemon waits on /healthz, which is public
    with running_daemon(tmp_path, config) as d:
        page = httpx.get(f"{d.url}/ui/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        csp = page.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert page.headers["x-content-type-options"] == "nosniff"
        module = httpx.get(f"{d.url}/ui/app.js")
        assert module.status_code == 200 and "javascript" in module.headers["content-type"]
        assert module.headers["x-content-type-options"] == "nosniff"
        assert httpx.get(f"{d.url}/ui", follow_redirects=False).status_code in (307, 308)
        assert httpx.get(f"{d.url}/workflows").status_code == 401
        assert httpx.post(f"{d.url}/ui/", json={}).status_code in (401, 405)
        assert httpx.get(f"{d.url}/ui/../workflows").status_code in (401, 404)
        ok = httpx.get(f"{d.url}/workflows", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200


def test_parsed_specs_are_remembered_within_a_bound(tmp_path: Path, monkeypatch) -> None:
    import bridge.store as store_mod
    from bridge.spec import parse_akoflow

    monkeypatch.setattr(store_mod, "SPEC_CACHE_WORKFLOWS", 3)
    monkeypatch.setattr(store_mod, "SPEC_CACHE_STEPS", 4)
    store = store_mod.Store(tmp_path / "s.db")
    try:
        ids = []
        for i in range(10):
            text = base64.b64decode(_wf(f"wf{i}", 2)["workflow"]).decode()
            ids.append(store.add_workflow(parse_akoflow(text).workflow))
        for wf_id in ids:
            row = store.workflow(wf_id)
            assert row is not None and row.spec.name == row.name
            assert [a.spec.name for a in store.activities(wf_id)] == ["step0", "step1"]
        assert len(store._workflow_specs) <= 3 and len(store._step_specs) <= 4
        assert store.workflow(ids[0]).spec.name == "wf0"  # forgotten, parsed again
    finally:
        store.close()

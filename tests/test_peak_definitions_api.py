"""The Peak-style definitions surface (``/workflows/api/v1``) on a real ``akobridge serve``:
the seed's bodies with the shipped configs/bridge.yaml catalogue, describe, list filters and
paging, PUT, pause/resume, delete, idempotent create, the client's auth header and side
endpoints, and malformed requests (4xx naming the field, never 5xx)."""

from __future__ import annotations

import copy
import getpass
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from daemon_helpers import Daemon, _merge, running_daemon
from test_peak_definition import CRON, MANUAL, UPDATED, WEBHOOK

from bridge.daemon.config import DaemonConfigError, config_from_mapping

REPO = Path(__file__).resolve().parents[1]
SHIPPED_PEAK = yaml.safe_load((REPO / "configs" / "bridge.yaml").read_text())["peak"]
TOKEN = "peak-test-token-" + "x" * 24
BASE = "/workflows/api/v1"


class Api:
    """The daemon as peak-sdk talks to it: raw token, JSON content type, x-peak headers."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.http = httpx.Client(base_url=daemon.url, timeout=10, headers={
            "Authorization": TOKEN, "Content-Type": "application/json",
            "x-peak-sdkVersion": "1.29.0", "x-peak-sessionId": str(uuid.uuid4())})

    def call(self, method: str, path: str, body: Any = None, **kw: Any) -> httpx.Response:
        headers = {"x-peak-requestId": str(uuid.uuid4()), **kw.pop("headers", {})}
        r = self.http.request(method, f"{BASE}{path}", json={} if body is None else body,
                              headers=headers, **kw)
        assert r.status_code < 500, r.text
        return r

    def create(self, body: dict[str, Any], name: str | None = None) -> int:
        body = copy.deepcopy(body)
        if name:
            body["name"] = name
        r = self.call("POST", "/workflows/", body)
        assert r.status_code == 200, r.text
        return int(r.json()["id"])

    def names(self, **params: Any) -> list[str]:
        r = self.call("GET", "/workflows/", params=params)
        assert r.status_code == 200, r.text
        return [w["name"] for w in r.json()["workflows"]]


def private_file(path: Path, text: str) -> str:
    """Write ``text`` to ``path`` with mode 0600 (what the daemon demands of secrets)."""
    path.write_text(text)
    path.chmod(0o600)
    return str(path)


def files_holding(root: Path, secret: str, but: str = "secrets") -> list[Path]:
    """The files under ``root`` (other than the secrets file ``but``) that contain ``secret``:
    the job scripts, the store and its WAL, logs, serve.log."""
    return [p for p in root.rglob("*") if p.is_file() and p.name != but
            and secret.encode() in p.read_bytes()]


def peak_daemon(tmp: Path, extra: dict[str, Any] | None = None) -> Iterator[Api]:
    """A daemon with a token file and the shipped ``peak:`` block, as peak-sdk sees it;
    ``extra`` is merged into the config (nested mappings key by key)."""
    tokens = private_file(tmp / "tokens", f"{TOKEN}\n")
    config = _merge({"api": {"token_file": tokens}, "peak": SHIPPED_PEAK}, extra or {})
    with running_daemon(tmp, config) as daemon:
        client = Api(daemon)
        yield client
        client.http.close()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    yield from peak_daemon(tmp_path_factory.mktemp("peak"))


def test_the_shipped_catalogue_covers_every_id_of_the_seed() -> None:
    images = {(i["id"], i["version"]) for i in SHIPPED_PEAK["images"]}
    assert {(123, 1), (456, 2), (100, 100)} <= images
    types = {t["id"]: t["cluster"] for t in SHIPPED_PEAK["instance_types"]}
    assert set(types) >= {21, 22, 23} and set(types.values()) == {"local"}
    seed_ids = {(s["imageId"], s["imageVersionId"]) for b in [*CRON, *WEBHOOK, *MANUAL, *UPDATED]
                for s in b["steps"].values()}
    assert seed_ids <= images


def test_seed_bodies_are_created_and_described(api: Api) -> None:
    ids = {b["name"]: api.create(b) for b in (CRON[0], WEBHOOK[0], MANUAL[0])}
    cron = api.call("GET", f"/workflows/{ids['cron-workflow']}").json()
    assert set(cron) >= {"id", "name", "createdAt", "updatedAt", "status", "steps",
                         "lastExecution", "triggers", "watchers", "tags"}
    assert cron["status"] == "Available" and cron["lastExecution"] is None
    assert cron["createdAt"].endswith("Z") and cron["triggers"] == [{"cron": "0 0 * * *"}]
    step = cron["steps"]["stepName"]
    assert step["parameters"]["env"] == [{"key": "value"}]
    assert step["repository"] == {"url": "https://github.com/org/repo", "branch": "main",
                                  "token": "github"}
    assert cron["watchers"] == CRON[0]["watchers"] and cron["tags"] == CRON[0]["tags"]
    webhook = api.call("GET", f"/workflows/{ids['webhook-workflow']}").json()
    minted = webhook["triggers"][0]["webhook"]
    assert uuid.UUID(minted) and webhook["steps"]["step2"]["parents"] == ["step1"]
    manual = api.call("GET", f"/workflows/{ids['manual-workflow']}").json()
    assert manual["triggers"] == []
    assert manual["steps"]["stepName"]["runConfiguration"]["skipConfiguration"]["skipDAG"]


def test_create_answers_id_and_minted_webhook(api: Api) -> None:
    r = api.call("POST", "/workflows/", {**copy.deepcopy(WEBHOOK[0]), "name": "hook-reply"})
    reply = r.json()
    assert set(reply) == {"id", "triggers"}
    assert reply["triggers"] == [{"webhook": str(uuid.UUID(reply["triggers"][0]["webhook"]))}]
    described = api.call("GET", f"/workflows/{reply['id']}").json()
    assert described["triggers"] == reply["triggers"]


def test_list_filters_and_paging(api: Api) -> None:
    for i in range(3):
        api.create(CRON[0], f"paging-{i}")
    assert api.names(searchTerm="PAGING-") == ["paging-0", "paging-1", "paging-2"]
    r = api.call("GET", "/workflows/", params={"searchTerm": "paging-", "pageSize": 2,
                                                "pageNumber": 2}).json()
    assert (r["pageCount"], r["pageNumber"], r["pageSize"], r["workflowsCount"]) == (2, 2, 2, 3)
    assert [w["name"] for w in r["workflows"]] == ["paging-2"]
    item = r["workflows"][0]
    assert item["triggers"][0]["cron"] == "0 0 * * *" and item["triggers"][0]["scheduled"]
    assert item["tags"] == [{"name": "foo"}, {"name": "bar"}]
    paused = api.create(CRON[0], "paging-paused")
    assert api.call("POST", f"/workflows/{paused}/pause").json() == {}
    assert api.names(searchTerm="paging-", workflowStatus="Paused") == ["paging-paused"]
    both = api.call("GET", "/workflows/?searchTerm=paging-&workflowStatus=Available"
                    "&workflowStatus=Paused").json()
    assert both["workflowsCount"] == 4
    assert api.names(searchTerm="paging-", lastModifiedBy=getpass.getuser()) != []
    for params in ({"searchTerm": "paging-", "lastModifiedBy": "test@peak.ai"},
                   {"searchTerm": "paging-", "lastExecutionStatus": "Running"},
                   {"searchTerm": "no-such-workflow-anywhere"},
                   {"searchTerm": "paging-", "workflowStatus": "Draft"}):
        empty = api.call("GET", "/workflows/", params=params).json()
        assert empty == {"pageCount": 0, "pageNumber": 1, "pageSize": 25, "workflows": [],
                         "workflowsCount": 0}, params
    beyond = api.call("GET", "/workflows/", params={"searchTerm": "paging-",
                                                     "pageNumber": 9}).json()
    assert beyond["workflows"] == [] and beyond["pageCount"] == 1


def test_put_replaces_the_definition_and_keeps_status_and_webhook(api: Api) -> None:
    wf_id = api.create(MANUAL[0], "to-be-updated")
    r = api.call("PUT", f"/workflows/{wf_id}", UPDATED[0])
    assert r.status_code == 200 and r.json()["id"] == wf_id
    described = api.call("GET", f"/workflows/{wf_id}").json()
    assert described["name"] == "updated-workflow" and set(described["steps"]) == {"step1",
                                                                                  "step2"}
    assert described["steps"]["step1"]["imageId"] == 456
    assert described["retryOptions"]["numberOfRetries"] == 3
    again = api.call("PUT", f"/workflows/{wf_id}", UPDATED[0])  # a retried PUT: the same
    assert again.status_code == 200
    assert api.call("GET", f"/workflows/{wf_id}").json()["steps"] == described["steps"]

    hook = api.create(WEBHOOK[0], "hook-kept")
    minted = api.call("GET", f"/workflows/{hook}").json()["triggers"][0]["webhook"]
    api.call("POST", f"/workflows/{hook}/pause")
    body = {**copy.deepcopy(WEBHOOK[0]), "name": "hook-kept"}
    body["steps"]["step1"]["command"] = "echo changed > output.txt"
    assert api.call("PUT", f"/workflows/{hook}", body).status_code == 200
    after = api.call("GET", f"/workflows/{hook}").json()
    assert after["triggers"] == [{"webhook": minted}] and after["status"] == "Paused"
    assert after["steps"]["step1"]["command"] == "echo changed > output.txt"
    body["triggers"] = [{"webhook": True, "webhookPolicy": "generate"}]
    api.call("PUT", f"/workflows/{hook}", body)
    assert api.call("GET", f"/workflows/{hook}").json()["triggers"] != [{"webhook": minted}]


def test_pause_resume_and_delete(api: Api) -> None:
    wf_id = api.create(CRON[0], "pause-me")
    assert api.call("POST", f"/workflows/{wf_id}/pause").json() == {}
    assert api.call("POST", f"/workflows/{wf_id}/pause").status_code == 200  # idempotent
    assert api.call("GET", f"/workflows/{wf_id}").json()["status"] == "Paused"
    listed = api.call("GET", "/workflows/", params={"searchTerm": "pause-me"}).json()
    assert "scheduled" not in listed["workflows"][0]["triggers"][0]
    assert api.call("POST", f"/workflows/{wf_id}/resume").json() == {}
    assert api.call("GET", f"/workflows/{wf_id}").json()["status"] == "Available"
    r = api.call("DELETE", f"/workflows/{wf_id}")  # with a {} JSON body, as the client sends
    assert r.status_code == 200 and r.json() == {}
    gone = api.call("GET", f"/workflows/{wf_id}")
    assert gone.status_code == 404 and gone.json()["detail"][0]["field"] == "workflowId"
    assert api.call("DELETE", f"/workflows/{wf_id}").status_code == 404
    assert api.call("POST", f"/workflows/{wf_id}/resume").status_code == 404
    assert api.names(searchTerm="pause-me") == []


def test_a_retried_create_makes_one_definition(api: Api) -> None:
    body = {**copy.deepcopy(CRON[0]), "name": "retried-create"}
    request_id = str(uuid.uuid4())
    first = api.call("POST", "/workflows/", body, headers={"x-peak-requestId": request_id})
    second = api.call("POST", "/workflows/", body, headers={"x-peak-requestId": request_id})
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert api.names(searchTerm="retried-create") == ["retried-create"]
    other = api.call("POST", "/workflows/", body)  # a new request: the name is taken
    assert other.status_code == 409 and other.json()["detail"][0]["field"] == "name"


def test_create_or_update_finds_the_exact_name(api: Api) -> None:
    """What peak-sdk's create_or_update_workflow does: list by searchTerm, PUT the match."""
    api.create(CRON[0], "cou-workflow-long")
    target = api.create(CRON[0], "cou-workflow")
    found = api.call("GET", "/workflows/", params={"pageSize": 100,
                                                    "searchTerm": "cou-workflow"}).json()
    match = [w["id"] for w in found["workflows"] if w["name"] == "cou-workflow"]
    assert match == [target]


def test_the_client_auth_header_with_and_without_bearer(api: Api) -> None:
    url = f"{api.daemon.url}{BASE}/resources"
    assert httpx.get(url, headers={"Authorization": TOKEN}).status_code == 200
    assert httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    for bad in ({"Authorization": "wrong-token-wrong-token"},
                {"Authorization": "Bearer wrong-token-wrong-token"}, {}):
        r = httpx.get(url, headers=bad)
        assert r.status_code == 401 and r.json()["detail"][0]["field"] == "Authorization"


def test_resources_and_defaults(api: Api) -> None:
    resources = api.call("GET", "/resources").json()
    assert [r["id"] for r in resources] == [21, 22, 23]
    assert resources[2] == {"id": 23, "cpu": 2, "memory": 4, "gpu": None, "gpuMemory": None}
    assert api.call("GET", "/resources/defaults").json() == {"instanceTypeId": 21,
                                                             "storage": "10GB"}


def test_side_endpoints(api: Api) -> None:
    h = api.http
    r = h.request("GET", "/tenant-management/api/v1/external/tenants/tenant-metadata",
                  json={})
    assert r.status_code == 200 and r.json() == {}
    r = h.post("/resource-usage/api/v1/telemetry", json={"event": "x", "sdkVersion": "1.29.0"})
    assert r.status_code == 200 and r.json() == {}


def _step_change(**changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(WEBHOOK[0])
    body["name"] = "malformed"
    for path, value in changes.items():
        *parents, last = path.split("__")
        holder = body
        for part in parents:
            holder = holder[part]
        holder[last] = value
    return body


MALFORMED: list[tuple[str, str, Any, str]] = [
    ("POST", "/workflows/", b"{not json", "body"),
    ("POST", "/workflows/", b"", "body"),
    ("POST", "/workflows/", b"[NaN]", "body"),
    ("POST", "/workflows/", [1, 2], ""),
    ("POST", "/workflows/", {"steps": {}}, "name"),
    ("POST", "/workflows/", _step_change(name="bad name!"), "name"),
    ("POST", "/workflows/", _step_change(steps__step2__parents=["nope"]), "steps.step2.parents[0]"),
    ("POST", "/workflows/", _step_change(steps__step1__parents=["step2"]), "steps.step1.parents"),
    ("POST", "/workflows/", _step_change(triggers=[{"cron": "61 * * * *"}]), "triggers[0].cron"),
    ("POST", "/workflows/", _step_change(
        steps__step1__runConfiguration={"retryOptions": {"numberOfRetries": 6}}),
     "steps.step1.runConfiguration.retryOptions.numberOfRetries"),
    ("POST", "/workflows/", _step_change(
        steps__step1__runConfiguration={"retryOptions": {"duration": 121}}),
     "steps.step1.runConfiguration.retryOptions.duration"),
    ("POST", "/workflows/", _step_change(steps__step1__imageId=999),
     "steps.step1.imageId"),
    ("POST", "/workflows/", _step_change(steps__step1__imageVersionId=7),
     "steps.step1.imageVersionId"),
    ("POST", "/workflows/", _step_change(steps__step1__resources={"instanceTypeId": 99}),
     "steps.step1.resources.instanceTypeId"),
    ("POST", "/workflows/", _step_change(steps__step1__resources={"storage": "10TB"}),
     "steps.step1.resources.storage"),
    ("POST", "/workflows/", _step_change(steps__step1__resources={"storage": "0GB"}),
     "steps.step1.resources.storage"),
    ("POST", "/workflows/", _step_change(steps__step1__type="sql"), "steps.step1.type"),
    ("POST", "/workflows/", _step_change(steps__step1__colour="blue"), "steps.step1.colour"),
    ("PUT", "/workflows/1", b"{", "body"),
    ("PUT", "/workflows/987654", _step_change(), "workflowId"),
    ("PUT", "/workflows/abc", _step_change(), "workflow_id"),
    ("GET", "/workflows/0", {}, "workflow_id"),
    ("GET", f"/workflows/{2**70}", {}, "workflow_id"),
    ("DELETE", "/workflows/-1", {}, "workflow_id"),
    ("GET", "/workflows/?pageSize=0", {}, "pageSize"),
    ("GET", "/workflows/?pageNumber=x", {}, "pageNumber"),
    ("GET", "/workflows/?workflowStatus=Sleeping", {}, "workflowStatus.0"),
    ("GET", "/workflows/?lastExecutionStatus=Done", {}, "lastExecutionStatus.0"),
    ("POST", "/workflows/987654/pause", {}, "workflowId"),
]


@pytest.mark.parametrize(("method", "path", "body", "field"), MALFORMED,
                         ids=[f"{m}-{i}" for i, (m, *_rest) in enumerate(MALFORMED)])
def test_malformed_requests_are_4xx_naming_the_field(api: Api, method: str, path: str,
                                                     body: Any, field: str) -> None:
    kw: dict[str, Any] = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = api.http.request(method, f"{BASE}{path}", **kw)
    assert 400 <= r.status_code < 500, r.text
    fields = [d["field"] for d in r.json()["detail"]]
    assert field in fields, r.text


def test_bad_peak_configs_name_the_field(tmp_path: Path) -> None:
    def problem(peak: dict[str, Any]) -> str:
        with pytest.raises(DaemonConfigError) as info:
            cfg = config_from_mapping({"api": {"listen": ["unix:/tmp/x.sock"]}, "peak": peak})
            cfg.check()
        return str(info.value)

    assert "peak.images.0.image" in problem({"images": [{"id": 1, "version": 1,
                                                         "image": "relative.sif"}]})
    assert "peak.images.0.image" in problem({"images": [{"id": 1, "version": 1,
                                                         "image": "/data/image.img"}]})
    assert "peak.images.0.image" in problem({"images": [{"id": 1, "version": 1,
                                                         "image": "https://x/y"}]})
    img = {"id": 1, "version": 1, "image": "docker://python:3.12"}
    assert "peak.images[1]" in problem({"images": [img, img]})
    it = {"id": 5, "cluster": "local", "cpus": 1, "memory": "1Gi"}
    assert "peak.instance_types.0.memory" in problem({"instance_types": [{**it,
                                                                         "memory": "lots"}]})
    assert "peak.instance_types[1].id" in problem({"instance_types": [it, it]})
    assert "peak.defaults.instance_type" in problem({"instance_types": [it],
                                                      "defaults": {"instance_type": 6}})
    assert "peak.instance_types.0.gpus" in problem({"instance_types": [{**it, "gpus": -1}]})
    assert "peak.instance_types.0.max_storage" in problem({"instance_types": [{
        **it, "max_storage": "4G"}]})
    small = {**it, "max_storage": "4GB"}
    assert "peak.defaults.storage" in problem({"instance_types": [small], "defaults": {
        "instance_type": 5, "storage": "10GB"}})
    assert "peak.cron_catch_up_grace" in problem({"cron_catch_up_grace": "8d"})
    assert config_from_mapping({"peak": {"cron_catch_up": True, "cron_catch_up_grace": "2h"}
                                }).peak.cron_catch_up_grace == 7200
    assert config_from_mapping({"peak": {"instance_types": [small]}}).catalogue().defaults() \
        == {"instanceTypeId": 5, "storage": "4GB"}  # no defaults: what the first type offers
    secrets = tmp_path / "peak.secrets"
    secrets.write_text("github=abc\n")
    secrets.chmod(0o644)
    assert "peak.secrets_file" in problem({"secrets_file": str(secrets)})
    secrets.chmod(0o600)
    cfg = config_from_mapping({"peak": {"secrets_file": str(secrets)}})
    assert cfg.peak_secrets() == {"github": "abc"}


def test_an_instance_type_on_an_unknown_cluster_stops_serve(tmp_path: Path) -> None:
    (tmp_path / "clusters").mkdir()
    cfg = tmp_path / "bridge.yaml"
    cfg.write_text(yaml.safe_dump({
        "clusters_dir": str(tmp_path / "clusters"),
        "api": {"listen": ["127.0.0.1:0"], "allow_loopback_without_token": True},
        "peak": {"instance_types": [{"id": 1, "cluster": "nowhere", "cpus": 1,
                                     "memory": "1Gi"}]}}))
    res = subprocess.run([sys.executable, "-m", "bridge", "serve", "--config", str(cfg),
                          "--state-dir", str(tmp_path / "state")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode != 0
    assert "peak.instance_types[0].cluster" in res.stderr + res.stdout

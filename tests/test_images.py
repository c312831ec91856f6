"""Images are checked (and pulled) on the cluster before any sbatch."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import STANDIN_BIN, Harness, Receiver
from runtimes.config import ClusterConfig, ContainerSettings
from runtimes.images import cache_name

pytestmark = pytest.mark.slurm


def with_standin(cluster: ClusterConfig, tmp_path: Path) -> ClusterConfig:
    """The cluster running containers through the test-only singularity stand-in."""
    return cluster.model_copy(update={
        "container": ContainerSettings(engine="singularity",
                                       image_cache=str(tmp_path / "cache")),
        "env": {**cluster.env, "PATH": f"{STANDIN_BIN}:{os.environ['PATH']}",
                "AKB_STANDIN_PULL_LOG": str(tmp_path / "pulls.log")},
    })


def test_missing_image_fails_before_any_sbatch(harness, devslurm: ClusterConfig,
                                               receiver: Receiver, tmp_path: Path) -> None:
    h: Harness = harness(with_standin(devslurm, tmp_path))
    missing = f"{tmp_path}/nowhere/model.sif"
    wf_id = h.submit(
        f"name: m\nspec:\n  image: {missing}\n  webhooks:\n    - url: {receiver.url}\n"
        "  activities:\n    - name: a\n      run: echo a\n"
        "    - name: b\n      run: echo b\n      dependsOn: [a]\n"
    )
    h.run(wf_id, timeout=60)
    wf = h.store.workflow(wf_id)
    assert wf is not None and wf.state.value == "FAILED"
    assert missing in (wf.reason or "") and "does not exist" in (wf.reason or "")
    assert h.states(wf_id) == {"a": "SKIPPED", "b": "SKIPPED"}
    assert h.bridge.runtimes["devslurm"].calls["sbatch"] == 0
    assert all(h.store.attempts(a.id) == [] for a in h.store.activities(wf_id))
    h.deliver_all()
    received = receiver.wait_for(3)
    assert [r.body["type"] for r in received] == [
        "ACTIVITY_COMPLETED", "ACTIVITY_COMPLETED", "WORKFLOW_DONE"]
    assert received[-1].body["data"]["Status"] == 3
    assert missing in received[-1].body["data"]["Reason"]


def test_docker_images_are_pulled_once_into_the_cache(harness, devslurm: ClusterConfig,
                                                      tmp_path: Path) -> None:
    cluster = with_standin(devslurm, tmp_path)
    doc = ("name: p\nspec:\n  image: docker://alpine:3.20\n  activities:\n"
           "    - name: a\n      run: echo a\n    - name: b\n      run: echo b\n")
    for _ in range(2):
        h: Harness = harness(cluster)
        wf_id = h.submit(doc)
        h.run(wf_id, timeout=60)
        assert h.states(wf_id) == {"a": "COMPLETED", "b": "COMPLETED"}
    cached = tmp_path / "cache" / cache_name("docker://alpine:3.20")
    assert cached.name.startswith("docker-alpine_3.20-")
    assert cached.read_text() == "stand-in image of docker://alpine:3.20\n"
    assert (tmp_path / "pulls.log").read_text().splitlines() == [
        f"docker://alpine:3.20 -> {cached}.part"]  # pulled once, reused by the second workflow
    [attempt] = h.store.attempts(h.store.activities(wf_id)[0].id)
    argv = Path(attempt.jobdir, "container-argv").read_bytes().split(b"\0")
    assert str(cached).encode() in argv


def test_a_fresh_image_step_pulls_again(harness, devslurm: ClusterConfig,
                                        tmp_path: Path) -> None:
    """Peak ``clearImageCache`` (Step.fresh_image): pulled even though the cache has it."""
    from bridge.spec import parse_akoflow

    cluster = with_standin(devslurm, tmp_path)
    doc = ("name: f\nspec:\n  image: docker://alpine:3.20\n  activities:\n"
           "    - name: a\n      run: echo a\n")
    for fresh in (False, False, True):
        h: Harness = harness(cluster)
        wf = parse_akoflow(doc).workflow.model_copy(update={"runtime": cluster.name})
        wf = wf.model_copy(update={"steps": tuple(s.model_copy(update={"fresh_image": fresh})
                                                  for s in wf.steps)})
        wf_id = h.bridge.submit(wf)
        h.run(wf_id, timeout=60)
        assert h.states(wf_id) == {"a": "COMPLETED"}
    pulls = (tmp_path / "pulls.log").read_text().splitlines()
    assert len(pulls) == 2  # the first workflow, then the fresh one (not the second)

"""A workflow whose results cannot be brought back has not succeeded: FAILED with the reason,
``run`` exits 1, and WORKFLOW_DONE says so (Status is not 1)."""

from __future__ import annotations

from pathlib import Path

from test_staging import akobridge

from bridge.store import Store
from conftest import Receiver

BROKEN = """\
name: lost
spec:
  runtime: local
  mountPath: {mount}
  volumes: ["{vsrc}:{vdst}"]
  webhooks:
    - name: rec
      url: {url}
  activities:
    - name: make
      run: |
        echo result > {vdst}/r.txt
        rm -rf {vsrc} && echo "in the way" > {vsrc}
"""


def test_stage_out_failure_fails_the_workflow(tmp_path: Path, receiver: Receiver) -> None:
    mount, vsrc, vdst = tmp_path / "mnt", tmp_path / "vsrc", tmp_path / "vdst"
    mount.mkdir()
    vsrc.mkdir()
    (vsrc / "input.txt").write_text("input\n")
    wf = tmp_path / "lost.yaml"
    wf.write_text(BROKEN.format(mount=mount, vsrc=vsrc, vdst=vdst, url=receiver.url))
    res = akobridge(tmp_path, "run", wf, "--webhook-wait", "20")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "FAILED" in res.stdout and "Traceback" not in res.stderr
    why = f"bringing {vdst} back to {vsrc} failed"
    assert why in " ".join(res.stdout.split()), res.stdout  # said at the end of run
    shown = akobridge(tmp_path, "status", "1")
    assert why in " ".join(shown.stdout.split()), shown.stdout  # and by status ID
    [done] = receiver.of_type("WORKFLOW_DONE")
    assert done["data"]["Status"] != 1 and done["data"]["State"] == "FAILED", done
    [act] = receiver.of_type("ACTIVITY_COMPLETED")
    assert act["data"]["Status"] == 1  # the activity itself did its work
    store = Store(tmp_path / "state" / "akobridge.db")
    row = store.workflow(1)
    assert row is not None and row.state.value == "FAILED"
    assert row.reason and f"bringing {vdst} back to {vsrc} failed" in row.reason, row.reason

"""Timestamps are right whatever the zone of the bridge host or the login node: Slurm commands
run with TZ=UTC, and the parsers read UTC. The parser tests are run again under zones far
from UTC, and a real job's start time is checked with the bridge itself in such a zone."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime

import pytest

from conftest import REPO

ZONES = ["America/Sao_Paulo", "Asia/Kolkata"]


@pytest.mark.skipif(os.environ.get("AKB_TZ_CHILD") == "1", reason="already the child run")
@pytest.mark.parametrize("zone", ZONES)
def test_parser_tests_pass_in_other_zones(zone: str) -> None:
    env = {**os.environ, "TZ": zone, "AKB_TZ_CHILD": "1"}
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "tests/test_slurm_parsers.py"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:]


@pytest.mark.slurm
@pytest.mark.parametrize("zone", ZONES)
def test_a_jobs_times_are_utc_with_the_bridge_in_another_zone(devslurm_local, zone: str,
                                                               tmp_path) -> None:
    """The bridge in one zone, the "login node" (the Slurm commands' environment) in
    another: squeue's start time of a running job must be within seconds of now (UTC)."""
    node_zone = ZONES[1 - ZONES.index(zone)]
    cluster = devslurm_local.model_copy(update={"env": {**devslurm_local.env,
                                                         "TZ": node_zone}})
    code = f"""
import sys, time
from datetime import UTC, datetime
from runtimes import JobRequest, TrackedJob, open_runtime
from runtimes.config import ClusterConfig
cluster = ClusterConfig.model_validate_json(sys.stdin.read())
rt = open_runtime(cluster)
jobdir = {str(tmp_path / "job")!r}
script = ("#!/bin/bash\\n#SBATCH --job-name=akb-tz-1-1-1\\n"
          "#SBATCH --output={tmp_path}/o\\nsleep 20\\n")
[sub] = rt.submit([JobRequest("akb-tz-1-1-1", jobdir, script)])
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    rt._last_slot = float("-inf")
    st = rt.poll([TrackedJob("akb-tz-1-1-1", jobdir, sub.job_id)])[sub.job_id]
    if st.started_at:
        break
    time.sleep(0.5)
rt.cancel([sub.job_id])
print(st.started_at.isoformat(), datetime.now(UTC).isoformat())
"""
    env = {**os.environ, "TZ": zone}
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, text=True,
                         input=cluster.model_dump_json(), capture_output=True,
                         timeout=90)
    assert res.returncode == 0, res.stderr[-3000:]
    started, now = (datetime.fromisoformat(t) for t in res.stdout.split())
    assert started.tzinfo is not None
    assert abs((now - started).total_seconds()) < 40, (started, now, zone)
    assert started.astimezone(UTC) <= datetime.now(UTC)

"""User values never widen what a job can reach: bind paths cannot smuggle extra mounts, staged
files never arrive setuid."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from bridge.jobs import render_step
from bridge.spec import parse_akoflow
from bridge.spec.errors import SpecError
from runtimes.config import LOCAL, ContainerSettings
from runtimes.render import RenderError
from runtimes.staging import stage_in, stage_out
from runtimes.transport import LocalTransport


def _wf(volume: str = "/data/in:/scratch/in", mount: str = "/scratch/work") -> str:
    return (f"name: b\nspec:\n  mountPath: {mount}\n  volumes: [\"{volume}\"]\n"
            "  activities:\n    - {name: x, run: 'true'}\n")


@pytest.mark.parametrize(("volume", "mount", "field", "char"), [
    ("/data/in:/scratch/in,/etc", "/scratch/work", "volumes", "','"),
    ("/data/in:/scratch/in", "/scratch/work,/root", "mountPath", "','"),
    ("/data/in:/scratch/a:b", "/scratch/work", "volumes", "SOURCE:TARGET"),
])
def test_bind_injection_is_refused_at_intake(volume: str, mount: str, field: str,
                                            char: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_akoflow(_wf(volume, mount))
    assert f"spec.{field}" in str(err.value) and char in str(err.value), str(err.value)


def test_render_refuses_a_bind_with_a_comma_whatever_the_intake(tmp_path: Path) -> None:
    """The last line of defence, for every intake format: the renderer itself."""
    wf = parse_akoflow(_wf()).workflow
    assert wf is not None
    cluster = LOCAL.model_copy(update={"kind": "slurm", "container": ContainerSettings(
        engine="singularity")})
    step = wf.steps[0].model_copy(update={"image": "/img/a.sif"})
    with pytest.raises(RenderError, match="bind path '/scratch/jobs/a,/etc' must not contain ','"):
        render_step(wf, step, cluster, workflow_id=1, token="akb-t-1-1-1",
                    jobdir="/scratch/jobs/a,/etc", attempt=1)


def test_staging_strips_setuid_and_setgid(tmp_path: Path) -> None:
    src, cluster_side, back = tmp_path / "src", tmp_path / "cluster", tmp_path / "back"
    src.mkdir()
    tool = src / "tool"
    tool.write_text("#!/bin/sh\necho hi\n")
    os.chmod(tool, 0o6755)
    transport = LocalTransport()
    stage_in(transport, str(src), str(cluster_side))
    up = stat.S_IMODE((cluster_side / "tool").stat().st_mode)
    assert up == 0o755, oct(up)
    made = cluster_side / "made"  # a job on the cluster leaves a setuid file behind
    made.write_text("x")
    os.chmod(made, 0o4755)
    stage_out(transport, str(cluster_side), str(back))
    down = stat.S_IMODE((back / "made").stat().st_mode)
    assert down == 0o755, oct(down)

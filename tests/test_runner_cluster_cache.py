"""Bridge.cluster caches resolved configs; a reload's new config set is what it answers."""

from __future__ import annotations

from pathlib import Path

from bridge.runner import Bridge
from bridge.store import Store
from runtimes.config import LOCAL, ClusterConfig, Clusters, SlurmSettings


def box(poll: float) -> ClusterConfig:
    return ClusterConfig(name="box", kind="process", aliases=("b",),
                         slurm=SlurmSettings(poll_interval=poll))


def test_reload_replaces_the_cached_configs(tmp_path: Path) -> None:
    store = Store(tmp_path / "akobridge.db")
    bridge = Bridge(store, Clusters([box(1.0)]), tmp_path)
    first = bridge.cluster("box")
    assert bridge.cluster("box") is first and bridge.cluster("b").slurm.poll_interval == 1.0
    assert first.workdir == str(tmp_path / "jobs")  # resolved against the state dir
    assert bridge.cluster("local").workdir == str(tmp_path / "jobs") and LOCAL.workdir is None
    bridge.reload(Clusters([box(2.0)]))
    assert bridge.cluster("box").slurm.poll_interval == 2.0
    assert bridge.cluster("b").slurm.poll_interval == 2.0
    store.close()

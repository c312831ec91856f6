"""How jobs reach a cluster: one :class:`Runtime` interface, a Slurm and a process runtime."""

from __future__ import annotations

from runtimes.base import JobRequest, JobState, JobStatus, Runtime, Submitted, TrackedJob
from runtimes.config import ClusterConfig, Clusters


def open_runtime(cluster: ClusterConfig) -> Runtime:
    """The runtime a cluster config asks for, with its transport connected."""
    if cluster.kind == "process":
        from runtimes.process import ProcessRuntime

        return ProcessRuntime(cluster)
    from runtimes.slurm import SlurmRuntime

    if cluster.transport == "ssh":
        from runtimes.ssh import SSHTransport

        return SlurmRuntime(cluster, SSHTransport(cluster))
    from runtimes.transport import LocalTransport

    transport = LocalTransport(cluster.env)
    if cluster.slurm.backend == "pyslurm":  # refuse unless pyslurm matches this Slurm
        from runtimes.slurm.pyslurm_backend import (
            PyslurmRuntime,
            check_pyslurm,
            pyslurm_release,
            slurm_release,
        )

        check_pyslurm(slurm_release(transport), pyslurm_release())
        return PyslurmRuntime(cluster, transport)
    return SlurmRuntime(cluster, transport)


__all__ = [
    "ClusterConfig", "Clusters", "JobRequest", "JobState", "JobStatus", "Runtime", "Submitted",
    "TrackedJob", "open_runtime",
]

"""What ``/metrics`` reads from the bridge at scrape time: jobs by state and cluster,
controller calls by command, SSH connections, submissions, webhook queue depth."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bridge.metrics import REGISTRY
from bridge.runner import Bridge
from bridge.store import Store

CONTROLLER_COMMANDS = frozenset({"squeue", "sacct", "sbatch", "scancel", "sinfo", "scontrol"})


class BridgeCollector(Collector):
    """A custom collector: numbers are read when Prometheus asks, never kept twice."""

    def __init__(self, bridge: Bridge, store_path: Path) -> None:
        self.bridge = bridge
        self.store_path = store_path

    def register(self) -> None:
        REGISTRY.register(self)

    def unregister(self) -> None:
        REGISTRY.unregister(self)

    def collect(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("akobridge_attempts", "Attempts by cluster and state.",
                                 labels=["cluster", "state"])
        submitted = CounterMetricFamily("akobridge_jobs_submitted",
                                        "Attempts that got a job id, by cluster.",
                                        labels=["cluster"])
        queue = GaugeMetricFamily("akobridge_webhook_pending",
                                  "Webhook deliveries waiting to be sent.")
        store = Store(self.store_path)
        try:
            for cluster, state, n in store.db.execute(
                    "SELECT cluster, state, count(*) FROM attempts GROUP BY cluster, state"):
                jobs.add_metric([cluster, state], n)
            for cluster, n in store.db.execute(
                    "SELECT cluster, count(*) FROM attempts WHERE job_id IS NOT NULL"
                    " GROUP BY cluster"):
                submitted.add_metric([cluster], n)
            queue.add_metric([], store.db.execute(
                "SELECT count(*) FROM deliveries WHERE state='pending'").fetchone()[0])
        finally:
            store.close()
        yield jobs
        yield submitted
        yield queue
        calls = CounterMetricFamily("akobridge_cluster_commands",
                                    "Commands run on each cluster (controller RPCs among them).",
                                    labels=["cluster", "command", "controller"])
        connects = CounterMetricFamily("akobridge_ssh_connects",
                                       "SSH connections opened (first and reconnects).",
                                       labels=["cluster"])
        unreachable = GaugeMetricFamily("akobridge_cluster_unreachable",
                                        "1 when the last round could not reach the cluster.",
                                        labels=["cluster"])
        for name, rt in list(self.bridge.runtimes.items()):
            for command, n in rt.calls.items():
                calls.add_metric([name, command, str(command in CONTROLLER_COMMANDS).lower()],
                                 n)
            n_conn = getattr(rt.transport, "connects", None)
            if isinstance(n_conn, int):
                connects.add_metric([name], n_conn)
        for name in self.bridge.clusters.names():
            unreachable.add_metric([name], 1.0 if name in self.bridge.unreachable else 0.0)
        yield calls
        yield connects
        yield unreachable

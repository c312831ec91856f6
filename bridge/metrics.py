"""Prometheus metrics of the daemon (served at ``/metrics``).

One registry for the process; the modules that do the work increment these. Label values
are bounded (cluster names, command names, route templates, outcome words), never ids.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

JOBS = Gauge("akobridge_jobs", "Attempts by state and cluster (live and recent).",
             ["cluster", "state"], registry=REGISTRY)
POLL_SECONDS = Histogram("akobridge_poll_cycle_seconds", "Duration of a cluster round.",
                         ["cluster"], registry=REGISTRY,
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
CONTROLLER_CALLS = Counter("akobridge_controller_calls_total",
                           "Slurm controller commands run (squeue, sacct, sbatch, scancel).",
                           ["cluster", "command"], registry=REGISTRY)
SSH_RECONNECTS = Counter("akobridge_ssh_reconnects_total", "SSH connections (re)opened.",
                         ["cluster"], registry=REGISTRY)
SUBMISSIONS = Counter("akobridge_submissions_total", "Jobs handed to sbatch, by outcome.",
                      ["cluster", "outcome"], registry=REGISTRY)
WEBHOOK_DELIVERIES = Counter("akobridge_webhook_deliveries_total",
                             "Webhook POSTs by outcome (delivered, failed, dead).",
                             ["outcome"], registry=REGISTRY)
WEBHOOK_QUEUE = Gauge("akobridge_webhook_queue_depth", "Webhook deliveries pending.",
                      registry=REGISTRY)
API_REQUESTS = Counter("akobridge_api_requests_total", "HTTP requests by route and status.",
                       ["method", "route", "code"], registry=REGISTRY)
WORKFLOWS_ACCEPTED = Counter("akobridge_workflows_accepted_total",
                             "Workflows stored, by intake (api, spool, cli).", ["intake"],
                             registry=REGISTRY)

__all__ = ["API_REQUESTS", "CONTROLLER_CALLS", "JOBS", "POLL_SECONDS", "REGISTRY",
           "SSH_RECONNECTS", "SUBMISSIONS", "WEBHOOK_DELIVERIES", "WEBHOOK_QUEUE",
           "WORKFLOWS_ACCEPTED"]

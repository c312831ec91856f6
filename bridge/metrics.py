"""Prometheus metrics of the daemon (served at ``/metrics``).

One registry for the process; the modules that do the work increment these, and
:mod:`bridge.daemon.metrics` reads the rest (jobs by state, controller calls, SSH connects)
from the bridge when scraped. Label values are bounded (cluster names, command names, route
templates, outcome words), never ids.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

POLL_SECONDS = Histogram("akobridge_poll_cycle_seconds", "Duration of a cluster round.",
                         ["cluster"], registry=REGISTRY,
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
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
INTAKE_BATCH = Histogram("akobridge_intake_batch_workflows",
                         "API submissions stored per transaction (group commit).",
                         registry=REGISTRY, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))

__all__ = ["API_REQUESTS", "INTAKE_BATCH", "POLL_SECONDS", "REGISTRY", "WEBHOOK_DELIVERIES",
           "WEBHOOK_QUEUE", "WORKFLOWS_ACCEPTED"]

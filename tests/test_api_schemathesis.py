"""Property-based fuzzing of a real ``akobridge serve`` from its own ``/openapi.json``: no
5xx, every response matches the schema, and every status code is one the schema declares.

``GET /events`` (an endless stream) is left out. Intake POSTs are generated from the schema,
so they almost never decode to a valid workflow; the few that do run ``true`` on the local
cluster, which is cheap.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from daemon_helpers import Daemon, running_daemon
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import (
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_daemon(tmp_path_factory.mktemp("schemathesis"),
                        {"api": {"max_body": "256KiB"}}) as d:
        yield d


def test_api_conforms_to_its_openapi(daemon: Daemon) -> None:
    """Each operation of the live schema, 25 generated requests (each is a call and checks)."""
    api = schemathesis.openapi.from_url(f"{daemon.url}/openapi.json").exclude(path="/events")
    failures: dict[str, str] = {}
    tested = 0
    for result in api.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck), phases=[Phase.explicit,
                  Phase.generate])
        def fuzz(case: schemathesis.Case) -> None:
            case.call_and_validate(checks=CHECKS, timeout=15)

        try:
            fuzz()
        except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - reported below
            failures[operation.label] = str(exc)[:3000]
        tested += 1
    assert tested >= 15
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
    assert daemon.proc.poll() is None, daemon.output()

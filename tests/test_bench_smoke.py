"""``bench/daemon_bench.py --quick`` runs to the end and prints every row (the numbers are not
checked: a benchmark is not a timed test)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO

ROWS = [
    *(f"intake c={c} {what}" for c in (1, 10, 50) for what in ("throughput", "p50", "p99")),
    *(f"intake c={c} at 300/s {what}" for c in (10, 50) for what in ("sent", "p50", "p99")),
    "webhook local p50", "webhook local p99",
    "webhook slurm p50", "webhook slurm p99", "slurm controller calls",
    "chain parent→child p50", "chain parent→child p99",
    "daemon RSS", "idle CPU", "list page p50", "list page p99",
]


@pytest.mark.slow
def test_daemon_bench_quick_prints_every_row() -> None:
    res = subprocess.run([sys.executable, str(REPO / "bench" / "daemon_bench.py"), "--quick"],
                         capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    for row in ROWS:
        assert row in res.stdout, f"{row!r} missing from:\n{res.stdout}"
    assert "Slurm rows skipped" in res.stdout

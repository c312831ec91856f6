"""Kubernetes-style CPU and memory quantities as Slurm wants them."""

from __future__ import annotations

import pytest

from bridge.spec.quantities import parse_cpu, parse_memory_mib


@pytest.mark.parametrize(
    ("value", "cpus"),
    [
        (1, 1),
        (2, 2),
        (0.5, 1),
        (1.2, 2),
        ("1", 1),
        ("2", 2),
        ("0.5", 1),
        ("500m", 1),
        ("1000m", 1),
        ("1500m", 2),
        ("2000m", 2),
        ("1m", 1),
        (64, 64),
    ],
)
def test_cpu_rounds_up_to_whole_cpus(value: object, cpus: int) -> None:
    assert parse_cpu(value) == cpus


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (0, "must be positive"),
        (-1, "must be positive"),
        ("0", "must be positive"),
        ("0m", "must be positive"),
        ("-500m", "must be positive"),
        (-0.5, "must be positive"),
        (True, "not a CPU quantity"),
        (False, "not a CPU quantity"),
        ("abc", "not a CPU quantity: 'abc'"),
        ("", "not a CPU quantity"),
        ("1 ", "not a CPU quantity"),
        ("2Gi", "not a CPU quantity"),
        ("1e3", "not a CPU quantity"),
        (None, "not a CPU quantity"),
        ([1], "not a CPU quantity"),
        (float("nan"), "not a CPU quantity"),
        (float("inf"), "not a CPU quantity"),
        (10**9, "too large"),
    ],
)
def test_cpu_rejects_with_a_hint(value: object, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_cpu(value)
    assert fragment in str(info.value)
    if "too large" not in fragment:
        assert "use 1, 2, 0.5 or 500m" in str(info.value)


@pytest.mark.parametrize(
    ("value", "mib"),
    [
        ("512Mi", 512),
        ("4Gi", 4096),
        ("2G", 1908),  # 2e9 bytes, rounded up
        ("800M", 763),
        ("1Ti", 1024 * 1024),
        ("1024Ki", 1),
        ("1025Ki", 2),
        ("1.5Gi", 1536),
        ("0.5Mi", 1),
        ("1e9", 954),
        ("1E9", 954),
        ("1k", 1),
        ("1048576", 1),
        ("1048577", 2),
        (1048576, 1),
        (1, 1),
        (2**30, 1024),
        (1.5e9, 1431),
    ],
)
def test_memory_in_mib_rounded_up(value: object, mib: int) -> None:
    assert parse_memory_mib(value) == mib


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (0, "must be positive"),
        ("0", "must be positive"),
        ("0Gi", "must be positive"),
        (-1, "must be positive"),
        ("-1Gi", "must be positive"),
        ("lots", "not a memory quantity: 'lots'"),
        ("4 Gi", "not a memory quantity"),
        ("4gb", "not a memory quantity"),
        ("1K", "not a memory quantity"),
        ("", "not a memory quantity"),
        (True, "not a memory quantity"),
        (None, "not a memory quantity"),
        ({"a": 1}, "not a memory quantity"),
        ("500m", "did you mean 500Mi or 500M?"),
        ("1e40", "too large"),
        ("99999Ei", "too large"),
    ],
)
def test_memory_rejects_with_a_hint(value: object, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_memory_mib(value)
    assert fragment in str(info.value)

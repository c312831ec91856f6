"""Kubernetes-style resource quantities (AkoFlow ``cpuLimit``/``memoryLimit``) for Slurm, and
the durations of the akobridge extensions (``timeLimit``, ``retry.backoff``)."""

from __future__ import annotations

import math
import re
from decimal import ROUND_CEILING, Decimal

from runtimes.config import MAX_BACKOFF_S

_CPU_HINT = "use 1, 2, 0.5 or 500m"
_MEM_HINT = "use e.g. 512Mi, 4Gi, 2G, 800M, or a number of bytes"
_MAX_CPUS = 1_000_000
_MAX_BYTES = Decimal(2) ** 63

_NUMBER = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_CPU_RE = re.compile(rf"({_NUMBER})(m?)")
_MEM_RE = re.compile(rf"({_NUMBER})([eE][+-]?[0-9]+|Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E|m)?")
_FACTORS = {
    "": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}  # fmt: skip


def _show(value: object) -> str:
    text = repr(value) if not isinstance(value, bool) else str(value).lower()
    return text if len(text) <= 60 else text[:57] + "..."


def _number(value: object) -> Decimal | None:
    """An int or finite float as a Decimal; None for anything else (bool included)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float) and math.isfinite(value):
        return Decimal(repr(value))
    return None


def parse_cpu(value: object) -> int:
    """Whole CPUs for ``1``, ``2``, ``0.5``, ``"500m"``, ``"1500m"``, ``"2"``, rounded up."""
    amount = _number(value)
    if amount is None and isinstance(value, str):
        m = _CPU_RE.fullmatch(value)
        if m:
            amount = Decimal(m.group(1)) / (1000 if m.group(2) else 1)
        elif value.startswith("-") and _CPU_RE.fullmatch(value[1:]):
            amount = Decimal(-1)
    if amount is None:
        raise ValueError(f"not a CPU quantity: {_show(value)} ({_CPU_HINT})")
    if amount <= 0:
        raise ValueError(f"CPU quantity must be positive: {_show(value)} ({_CPU_HINT})")
    if amount > _MAX_CPUS:
        raise ValueError(f"CPU quantity is too large: {_show(value)} (at most {_MAX_CPUS})")
    return int(amount.to_integral_value(rounding=ROUND_CEILING))


def parse_memory_mib(value: object) -> int:
    """MiB, rounded up, for ``512Mi``, ``4Gi``, ``2G``, ``800M``, ``1e9``; plain numbers are bytes.

    Suffixes follow Kubernetes: ``G``/``M`` are powers of ten (``2G`` is 1908 MiB), ``Gi``/``Mi``
    powers of two.
    """
    amount = _number(value)
    if amount is None and isinstance(value, str):
        amount = _memory_bytes(value)
    if amount is None:
        raise ValueError(f"not a memory quantity: {_show(value)} ({_MEM_HINT})")
    if amount <= 0:
        raise ValueError(f"memory quantity must be positive: {_show(value)} ({_MEM_HINT})")
    if amount > _MAX_BYTES:
        raise ValueError(f"memory quantity is too large: {_show(value)}")
    return int((amount / 2**20).to_integral_value(rounding=ROUND_CEILING))


def _memory_bytes(text: str) -> Decimal | None:
    negative = text.startswith("-")
    m = _MEM_RE.fullmatch(text[1:] if negative else text)
    if not m:
        return None
    number, suffix = Decimal(m.group(1)), m.group(2) or ""
    if negative:
        return Decimal(-1)
    if suffix == "m":
        raise ValueError(
            f"{text!r} means {number}/1000 bytes (the Kubernetes 'm' suffix); "
            f"did you mean {m.group(1)}Mi or {m.group(1)}M?"
        )
    if suffix[:1] in ("e", "E") and suffix not in _FACTORS:
        exponent = int(suffix[1:])
        if exponent > 30:
            return _MAX_BYTES + 1
        if exponent < -30:
            return None
        number = number.scaleb(exponent)
    else:
        number *= _FACTORS[suffix]
    return number


# --- Peak storage (resources.storage: "10GB") ------------------------------------------------

STORAGE_RE = re.compile(r"([1-9][0-9]{0,5}) ?GB")
"""Peak's ``resources.storage``: whole gigabytes, 1GB to 999999GB (``10GB``, ``10 GB``)."""


def parse_storage_mib(value: str, what: str = "storage") -> int:
    """A Peak storage size in Slurm's megabytes (``--tmp``): ``10GB`` → 10240, a GB being
    1024 MB as Slurm counts them (its ``--tmp=10G``)."""
    m = STORAGE_RE.fullmatch(value) if isinstance(value, str) else None
    if not m:
        raise ValueError(f"{what} {_show(value)} must be a size in GB such as '10GB' "
                         "(a whole number from 1 to 999999)")
    return int(m.group(1)) * 1024


# --- durations (akobridge extensions: timeLimit, retry.backoff) -------------------------------

_DURATION_HINT = "use e.g. 90s, 30m, 2h, 1h30m, 1d or a number of seconds"
_DURATION_PART = re.compile(rf"({_NUMBER})(d|h|m|s)")
_UNIT_S = {"d": 86400, "h": 3600, "m": 60, "s": 1}
MAX_TIME_LIMIT_S = 365 * 86400


def parse_duration_s(value: object) -> Decimal:
    """Seconds in ``90``, ``1.5``, ``"90s"``, ``"30m"``, ``"2h"``, ``"1h30m"``, ``"1d"``.

    A plain number (or a string of one) is seconds; units are ``d``, ``h``, ``m``, ``s``, each at
    most once and from the largest down. Negative values are refused here; ranges are the
    callers' (:func:`parse_time_limit_s`, :func:`parse_backoff_s`).
    """
    amount = _number(value)
    if amount is None and isinstance(value, str):
        amount = _duration_text(value.strip())
    if amount is None and isinstance(value, str) and ":" in value:
        raise ValueError(f"not a duration: {_show(value)} (Slurm's clock notation is not "
                         f"accepted here, it is ambiguous; {_DURATION_HINT})")
    if amount is None:
        raise ValueError(f"not a duration: {_show(value)} ({_DURATION_HINT})")
    if amount < 0:
        raise ValueError(f"a duration cannot be negative: {_show(value)} ({_DURATION_HINT})")
    return amount


def _duration_text(text: str) -> Decimal | None:
    if re.fullmatch(_NUMBER, text):
        return Decimal(text)
    if text.startswith("-") and _duration_text(text[1:]) is not None:
        return Decimal(-1)
    total, pos, last = Decimal(0), 0, -1
    order = list(_UNIT_S)
    while pos < len(text):
        m = _DURATION_PART.match(text, pos)
        if not m or order.index(m.group(2)) <= last:
            return None  # garbage, a repeated unit, or units out of order ("30m1h")
        last = order.index(m.group(2))
        total += Decimal(m.group(1)) * _UNIT_S[m.group(2)]
        pos = m.end()
    return total if text else None


def parse_time_limit_s(value: object) -> int:
    """A wall-time limit in whole seconds (rounded up): positive, at most 365 days."""
    amount = parse_duration_s(value)
    if amount <= 0:
        raise ValueError(f"a time limit must be positive: {_show(value)} ({_DURATION_HINT})")
    if amount > MAX_TIME_LIMIT_S:
        raise ValueError(f"time limit {_show(value)} is too long (at most 365d)")
    return int(amount.to_integral_value(rounding=ROUND_CEILING))


def parse_backoff_s(value: object) -> float:
    """A wait before a retry in seconds: 0 (retry at once) up to one day."""
    amount = parse_duration_s(value)
    if amount > MAX_BACKOFF_S:
        raise ValueError(f"backoff {_show(value)} is too long (at most 1d)")
    return float(amount)

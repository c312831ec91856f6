"""``python -m bridge`` is the ``akobridge`` command.

The CLI is imported inside :func:`entry` with Ctrl-C held back, so that a Ctrl-C while Python
is still loading it ends quietly (exit 130) instead of printing a traceback — Python turns a
KeyboardInterrupt raised inside a class body (a dataclass field of a library) into a
RuntimeError, which no ``except KeyboardInterrupt`` catches.
"""

from __future__ import annotations

import signal
import sys
from typing import Any


def _interrupted(exc: BaseException) -> bool:
    """Whether ``exc`` is, or was caused by, a Ctrl-C."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, KeyboardInterrupt):
            return True
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return False


def _load_cli() -> Any:
    """``bridge.cli.main``, imported while a Ctrl-C is only recorded; exit 130 if one came."""
    pressed: list[int] = []
    before = signal.signal(signal.SIGINT, lambda signum, _frame: pressed.append(signum))
    try:
        from bridge.cli import main
    finally:
        signal.signal(signal.SIGINT, before)
    if pressed:
        sys.stderr.write("interrupted while starting; nothing was changed\n")
        sys.exit(130)
    return main


def entry() -> None:
    """The ``akobridge`` console script."""
    main = _load_cli()
    try:
        main()
    except BaseException as exc:  # noqa: BLE001 - only a Ctrl-C is handled here
        if isinstance(exc, SystemExit) or not _interrupted(exc):
            raise
        # before a command had its own handler in place (or inside a lazy import)
        sys.stderr.write("interrupted; every change made so far is committed, "
                         "`akobridge resume` goes on from there\n")
        sys.exit(130)


if __name__ == "__main__":
    entry()

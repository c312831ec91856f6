"""``python -m bridge`` is the ``akobridge`` command.

The CLI is imported inside :func:`entry` so that a Ctrl-C while Python is still loading it
ends quietly (exit 130) instead of printing a traceback.
"""

from __future__ import annotations

import sys


def entry() -> None:
    """The ``akobridge`` console script."""
    try:
        from bridge.cli import main
    except KeyboardInterrupt:
        sys.stderr.write("interrupted while starting; nothing was changed\n")
        sys.exit(130)
    try:
        main()
    except KeyboardInterrupt:  # before a command had its own handler in place
        sys.stderr.write("interrupted; every change made so far is committed, "
                         "`akobridge resume` goes on from there\n")
        sys.exit(130)


if __name__ == "__main__":
    entry()

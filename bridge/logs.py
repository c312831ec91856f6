"""structlog set-up: JSON lines for the daemon and pipes, readable lines on a terminal.

Log lines are written to whatever ``sys.stderr`` is *when they are logged*, one whole line
at a time. On a terminal, while the live progress view is shown, :func:`above` replaces
``sys.stderr`` with a stream that prints each line above the view, whole (not wrapped to the
terminal's width), instead of into the middle of it.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from collections.abc import Iterator
from typing import Any, TextIO

import structlog
from rich.console import Console
from rich.text import Text

_WRITE = threading.Lock()
_TO_STDOUT = False
_HELD = threading.local()


class StderrLogger:
    """A structlog logger that writes each rendered line to the current ``sys.stderr``."""

    def __init__(self, *_args: Any) -> None:
        pass

    def msg(self, message: str) -> None:
        held: list[str] | None = getattr(_HELD, "lines", None)
        if held is not None:
            held.append(message)
            return
        _write(message + "\n")

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


def _write(text: str) -> None:
    with _WRITE:
        stream = sys.stdout if _TO_STDOUT else sys.stderr
        try:
            stream.write(text)
            stream.flush()
        except (OSError, ValueError):  # stderr closed or gone (a closed pipe)
            pass


@contextlib.contextmanager
def together() -> Iterator[None]:
    """The lines this thread logs inside are written at the end, in one write: a write
    lets go of the GIL, and a thread that logs a line per item of a batch waited a switch
    interval per line to win it back under load."""
    if getattr(_HELD, "lines", None) is not None:  # nested: the outer one writes
        yield
        return
    _HELD.lines = []
    try:
        yield
    finally:
        lines, _HELD.lines = _HELD.lines, None
        if lines:
            _write("".join(line + "\n" for line in lines))


def configure(level: str = "WARNING", json: bool | None = None, stdout: bool = False) -> None:
    """Log to stderr (the daemon: ``stdout``) at ``level``; JSON unless stderr is a terminal
    (or ``json`` says so)."""
    global _TO_STDOUT
    _TO_STDOUT = stdout
    as_json = not sys.stderr.isatty() if json is None else json
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=StderrLogger,
        cache_logger_on_first_use=False,
    )


class LinesAbove:
    """A text stream that prints whole lines through a rich console (above its live view)."""

    def __init__(self, console: Console, original: TextIO) -> None:
        self._console = console
        self._original = original
        self._buffer = ""
        self._lock = threading.Lock()
        self.rich_proxied_file = original
        """Where rich consoles that write to ``sys.stderr`` really write (no loop)."""

    def write(self, text: str) -> int:
        with self._lock:
            self._buffer += text
            *lines, self._buffer = self._buffer.split("\n")
        for line in lines:
            self._console.print(Text.from_ansi(line), soft_wrap=True, highlight=False,
                                markup=False, emoji=False)
        return len(text)

    def flush(self) -> None:
        return

    def isatty(self) -> bool:
        return self._original.isatty()

    def fileno(self) -> int:
        return self._original.fileno()

    @property
    def encoding(self) -> str:
        return getattr(self._original, "encoding", "utf-8")

    def drain(self) -> None:
        with self._lock:
            rest, self._buffer = self._buffer, ""
        if rest:
            self._console.print(Text.from_ansi(rest), soft_wrap=True, highlight=False)


@contextlib.contextmanager
def above(console: Console) -> Iterator[None]:
    """While the block runs, lines written to ``sys.stderr`` are printed by ``console`` (on a
    terminal only; elsewhere the live view is not drawn and nothing needs moving)."""
    if not console.is_terminal:
        yield
        return
    original = sys.stderr
    proxy = LinesAbove(console, original)
    sys.stderr = proxy
    try:
        yield
    finally:
        sys.stderr = original
        proxy.drain()

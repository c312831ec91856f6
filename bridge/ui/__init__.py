"""The monitoring page: static files (plain ES modules, no build step) served at ``/ui/``."""

from __future__ import annotations

from pathlib import Path

STATIC_DIR: Path = Path(__file__).resolve().parent / "static"
"""The folder holding ``index.html``, the modules, ``style.css`` and ``vendor/``."""

__all__ = ["STATIC_DIR"]

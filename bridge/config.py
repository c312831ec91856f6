"""Where the bridge keeps its state and finds its cluster configs.

Order of precedence: command-line option, environment variable, default.
``AKOBRIDGE_STATE_DIR`` (default: the user's data dir, e.g. ``~/.local/share/akobridge``) and
``AKOBRIDGE_CLUSTERS_DIR`` (default: ``~/.config/akobridge/clusters``).
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

STATE_ENV = "AKOBRIDGE_STATE_DIR"
CLUSTERS_ENV = "AKOBRIDGE_CLUSTERS_DIR"
DB_NAME = "akobridge.db"


def state_dir(option: str | Path | None = None) -> Path:
    """The state dir, absolute: job directories under it are handed to processes that run
    elsewhere (a relative ``--state-dir st`` made every local job miss its script)."""
    if option:
        return Path(option).expanduser().absolute()
    if os.environ.get(STATE_ENV):
        return Path(os.environ[STATE_ENV]).expanduser().absolute()
    return Path(platformdirs.user_data_dir("akobridge"))


def clusters_dir(option: str | Path | None = None) -> Path:
    if option:
        return Path(option)
    if os.environ.get(CLUSTERS_ENV):
        return Path(os.environ[CLUSTERS_ENV])
    return Path(platformdirs.user_config_dir("akobridge")) / "clusters"

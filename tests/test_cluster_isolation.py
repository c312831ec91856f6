"""A cluster that cannot be reached, or hangs, delays only its own workflows."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.runner import Bridge
from bridge.spec import parse_akoflow
from bridge.store import Store
from conftest import lab_cluster
from runtimes.config import LOCAL, Clusters


@pytest.fixture()
def black_hole() -> Iterator[int]:
    """A port on 127.0.0.1 that accepts connections and never says a word."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def test_hanging_cluster_does_not_stall_the_local_one(tmp_path: Path, black_hole: int) -> None:
    base = lab_cluster("ssh", tmp_path)
    assert base.ssh is not None
    hung = base.model_copy(update={"name": "hung", "aliases": (), "ssh": base.ssh.model_copy(
        update={"port": black_hole, "connect_timeout": 4.0})})
    state = tmp_path / "state"
    store = Store(state / "akobridge.db")
    bridge = Bridge(store, Clusters([hung, LOCAL.model_copy(update={"max_running": 8})]), state)
    on_hung = bridge.submit(parse_akoflow(
        "name: stuck\nspec:\n  runtime: hung\n  activities:\n    - {name: x, run: 'true'}\n"
    ).workflow)
    acts = "".join(f"    - {{name: l{i}, run: 'sleep 0.1'}}\n" for i in range(6))
    on_local = bridge.submit(parse_akoflow(
        f"name: fine\nspec:\n  runtime: local\n  activities:\n{acts}").workflow)
    done_at: list[float] = []
    start = time.monotonic()

    def watch() -> None:
        row = store.workflow(on_local)
        if not done_at and row is not None and row.state.terminal:
            done_at.append(time.monotonic() - start)

    with pytest.raises(TimeoutError):
        bridge.run([on_hung, on_local], idle_s=0.05, on_cycle=watch, timeout_s=6)
    try:
        assert done_at, "the local workflow did not finish while the other cluster hung"
        assert done_at[0] < 3.5, done_at  # the hung connect takes 4 s per try
        assert store.workflow(on_local).state.value == "COMPLETED"  # type: ignore[union-attr]
        assert store.workflow(on_hung).state.value == "RUNNING"  # type: ignore[union-attr]
    finally:
        bridge.close()

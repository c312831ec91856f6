"""``pip install`` gives a working monitoring page: the wheel carries the page's static files,
the vendored layout library and its licence (no Node, no CDN on the login node)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import REPO


def test_the_wheel_ships_the_monitoring_page(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                          str(tmp_path), str(REPO)], capture_output=True, text=True,
                         timeout=600, check=False)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    (wheel,) = tmp_path.glob("akoflow_bridge-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {p.relative_to(REPO).as_posix() for p in (REPO / "bridge" / "ui").rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    assert "bridge/ui/static/index.html" in shipped
    assert any(n.startswith("bridge/ui/static/vendor/LICENSE") for n in shipped)
    assert shipped <= names, sorted(shipped - names)

"""The monitoring page's files without a browser: packaged where the daemon serves them,
nothing from the network, no HTML built from data, the vendored library as its README says,
and state colours with enough contrast."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from bridge.ui import STATIC_DIR

REPO = Path(__file__).resolve().parent.parent


def test_the_static_dir_holds_the_page_and_is_packaged() -> None:
    assert STATIC_DIR == REPO / "bridge" / "ui" / "static"
    for name in ("index.html", "app.js", "api.js", "style.css", "vendor/dagre.esm.js",
                 "vendor/LICENSE", "vendor/LICENSE-graphlib", "vendor/README.md"):
        assert (STATIC_DIR / name).is_file(), name
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"ui/static/*", "ui/static/**/*"' in pyproject


def test_every_module_it_imports_is_there_and_nothing_comes_from_the_network() -> None:
    files = [*STATIC_DIR.glob("*.js"), STATIC_DIR / "index.html", STATIC_DIR / "style.css"]
    for f in files:
        text = f.read_text()
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text), f
        assert "@import" not in text and "url(http" not in text, f
        for dep in re.findall(r"""^import .* from "(\./[^"]+)";$""", text, re.M):
            assert (f.parent / dep).is_file(), f"{f.name} imports {dep}"


def test_no_html_is_built_from_strings() -> None:
    for f in STATIC_DIR.glob("*.js"):
        text = f.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write",
                     "eval(", "new Function"):
            assert sink not in text, f"{f.name} uses {sink}"


def test_the_vendored_file_is_the_one_its_readme_names() -> None:
    readme = (STATIC_DIR / "vendor" / "README.md").read_text()
    digest = hashlib.sha256((STATIC_DIR / "vendor" / "dagre.esm.js").read_bytes()).hexdigest()
    assert f"`{digest}`" in readme
    for licence in ("LICENSE", "LICENSE-graphlib"):  # MIT, both
        assert "Permission is hereby granted" in (STATIC_DIR / "vendor" / licence).read_text()


def _luminance(colour: str) -> float:
    def channel(c: float) -> float:
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4
    r, g, b = (int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5))
    return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)


def contrast(a: str, b: str) -> float:
    hi, lo = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def test_state_colours_pass_wcag_aa() -> None:
    css = (STATIC_DIR / "style.css").read_text()
    var = dict(re.findall(r"--([\w-]+):\s*(#[0-9a-fA-F]{6})", css))
    groups = ["done", "running", "queued", "pending", "failed", "cancelled", "skipped"]
    assert all(f"{g}-fg" in var and f"{g}-bg" in var for g in groups)
    for g in groups:
        assert contrast(var[f"{g}-fg"], var[f"{g}-bg"]) >= 4.5, g
    for fg, bg in [("fg", "bg"), ("muted", "bg"), ("muted", "panel"), ("accent", "bg")]:
        assert contrast(var[fg], var[bg]) >= 4.5, (fg, bg)
    assert contrast("#ffffff", "#777777") < 4.5  # the check can fail

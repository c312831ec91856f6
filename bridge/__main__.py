"""``python -m bridge`` is the ``akobridge`` command."""

from bridge.cli import main

main()

#!/usr/bin/env bash
# The whole test suite from a fresh Debian 12 machine, as root:
#   1. the real test cluster (Slurm + slurmdbd/MariaDB + munge + sshd on 127.0.0.1),
#   2. a virtualenv with akobridge and its dev tools,
#   3. ruff, mypy, and pytest (every test, the Slurm ones included).
# Extra arguments go to pytest, e.g. `bash tests/run-all.sh -k seed`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ $(id -u) -ne 0 ]]; then
    echo "tests/run-all.sh must run as root: it installs and starts Slurm, munge, MariaDB, sshd" >&2
    exit 2
fi

start=$SECONDS
bash tests/cluster/setup.sh
# shellcheck source=/dev/null
. "${AKB_LAB:-/var/tmp/akb-lab}/env.sh"

if [[ ! -x .venv/bin/python ]]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[dev]'
echo "== setup done in $((SECONDS - start)) s"

.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/python -m pytest -q -ra -p no:cacheprovider "$@"
echo "== all done in $((SECONDS - start)) s"

#!/usr/bin/env bash
# Stop the single-node test cluster started by tests/cluster/setup.sh.
#
#   bash tests/cluster/stop.sh            # stop sshd, slurmd, slurmctld, slurmdbd, mariadb, munged
#   bash tests/cluster/stop.sh --purge    # ... and delete the lab directory (fresh start next time)
#
# Daemons are found through the pid files in the lab (${AKB_LAB:-/var/tmp/akb-lab}); if a pid file
# is missing or stale, processes whose command line / SLURM_CONF point into the lab are stopped
# instead. Nothing is killed by name. A munged that setup.sh did not start (no pid file in the lab)
# is left alone. Jobs still running on the node (slurmstepd) are not touched.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"

purge=0
for arg in "$@"; do
    case $arg in
        --purge) purge=1 ;;
        -h | --help) sed -n '2,11p' "$0"; exit 0 ;;
        *) echo "usage: $0 [--purge]" >&2; exit 2 ;;
    esac
done

if [[ $(id -u) -ne 0 ]]; then
    echo "stop.sh must run as root" >&2
    exit 1
fi

log "stopping test cluster in $LAB"
for entry in "${LAB_DAEMONS[@]}"; do
    IFS='|' read -r name file comm <<<"$entry"
    case $name in
        mariadb) timeout=60 ;;
        *) timeout=30 ;;
    esac
    stop_daemon "$name" "$file" "$comm" "$timeout"
done

if (( purge )); then
    for f in /etc/slurm/slurm.conf /etc/slurm/slurmdbd.conf; do
        if [[ -L $f && $(readlink "$f") == "$LAB/"* ]]; then
            rm -f "$f"
        fi
    done
    rm -rf "$LAB"
    log "removed $LAB"
fi
log "done"

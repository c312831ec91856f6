# shellcheck shell=bash
# Shared helpers for tests/cluster/setup.sh and tests/cluster/stop.sh.
# Sourced, not executed. Expects `set -euo pipefail` in the caller.

LAB=${AKB_LAB:-/var/tmp/akb-lab}
case $LAB in
    /*) ;;
    *) echo "AKB_LAB must be an absolute path (got '$LAB')" >&2; exit 2 ;;
esac
LAB=${LAB%/}

# Every daemon this lab runs: name|pid file|process name (/proc/PID/comm).
# Order matters: stop.sh stops them top to bottom (setup.sh starts them bottom to top).
# shellcheck disable=SC2034  # used by stop.sh
LAB_DAEMONS=(
    "sshd|$LAB/ssh/sshd.pid|sshd"
    "slurmd|$LAB/run/slurmd.pid|slurmd"
    "slurmctld|$LAB/run/slurmctld.pid|slurmctld"
    "slurmdbd|$LAB/run/slurmdbd.pid|slurmdbd"
    "mariadb|$LAB/mariadb/mariadb.pid|mariadbd"
    "munged|$LAB/munge/munged.pid|munged"
)

_T0=${EPOCHREALTIME}

# Seconds since the script started, e.g. "  3.42s".
elapsed() {
    local now=${EPOCHREALTIME}
    awk -v a="$_T0" -v b="$now" 'BEGIN { printf "%6.2fs", b - a }'
}

log() { printf '[%s] %s\n' "$(elapsed)" "$*"; }

die() {
    printf '\n[%s] ERROR: %s\n' "$(elapsed)" "$1" >&2
    shift
    local f
    for f in "$@"; do
        if [[ -s $f ]]; then
            printf -- '---- last 30 lines of %s ----\n' "$f" >&2
            tail -n 30 "$f" >&2 || true
            printf -- '---- end of %s ----\n' "$f" >&2
        fi
    done
    exit 1
}

# pid_of PIDFILE COMM -> prints the PID if the file names a live (non-zombie) process
# whose /proc/PID/comm is COMM; returns 1 otherwise.
pid_of() {
    local file=$1 comm=$2 pid state c
    [[ -r $file ]] || return 1
    pid=$(tr -dc '0-9' <"$file" 2>/dev/null || true)
    [[ -n $pid && -d /proc/$pid ]] || return 1
    c=
    read -r c 2>/dev/null <"/proc/$pid/comm" || true
    [[ $c == "$comm" ]] || return 1
    state=$(awk '{ print $3 }' "/proc/$pid/stat" 2>/dev/null || true)
    [[ $state != Z && $state != X ]] || return 1
    echo "$pid"
}

# Fallback when a pid file is missing or stale: processes named COMM that belong to this
# lab (the lab path is in their command line, or their SLURM_CONF points into the lab).
lab_pids() {
    local comm=$1 d pid c
    for d in /proc/[0-9]*; do
        pid=${d#/proc/}
        c=
        read -r c 2>/dev/null <"$d/comm" || true
        [[ $c == "$comm" ]] || continue
        # (no pipes into grep -q here: with pipefail an early exit of grep would read as "no")
        if grep -qzF -- "$LAB/" "$d/cmdline" 2>/dev/null ||
            grep -qzxF -- "SLURM_CONF=$LAB/slurm.conf" "$d/environ" 2>/dev/null; then
            echo "$pid"
        fi
    done
    return 0
}

# wait_gone TIMEOUT PID... -> 0 when all PIDs have exited (or are zombies).
wait_gone() {
    local timeout=$1 deadline pid alive state
    shift
    deadline=$(( ${EPOCHREALTIME%.*} + timeout ))
    while :; do
        alive=0
        for pid in "$@"; do
            if [[ -d /proc/$pid ]]; then
                state=$(awk '{ print $3 }' "/proc/$pid/stat" 2>/dev/null || true)
                [[ $state == Z || $state == X || -z $state ]] || alive=1
            fi
        done
        (( alive )) || return 0
        (( ${EPOCHREALTIME%.*} < deadline )) || return 1
        sleep 0.1
    done
}

# stop_daemon NAME PIDFILE COMM [TIMEOUT]: SIGTERM, wait, SIGKILL as last resort.
stop_daemon() {
    local name=$1 file=$2 comm=$3 timeout=${4:-30} pids pid
    if pid=$(pid_of "$file" "$comm"); then
        pids=$pid
    else
        pids=$(lab_pids "$comm" | tr '\n' ' ')
        pids=${pids% }
        if [[ -z $pids ]]; then
            log "$name: not running"
            rm -f "$file"
            return 0
        fi
        log "$name: no valid pid file ($file); found lab process(es) $pids"
    fi
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    # shellcheck disable=SC2086
    if ! wait_gone "$timeout" $pids; then
        log "$name: still running after ${timeout}s, sending SIGKILL to $pids"
        # shellcheck disable=SC2086
        kill -KILL $pids 2>/dev/null || true
        # shellcheck disable=SC2086
        wait_gone 10 $pids || log "$name: WARNING: $pids did not exit"
    fi
    rm -f "$file"
    log "$name: stopped (pid $pids)"
}

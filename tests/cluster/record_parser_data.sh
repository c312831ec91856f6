#!/usr/bin/env bash
# Re-record the real Slurm command outputs in tests/data/ (fixtures for the parser unit tests)
# on the test cluster from tests/cluster/setup.sh. Takes ~25 s. Job ids and times will differ
# from the committed files; the shapes are what the tests rely on.
#
#   bash tests/cluster/record_parser_data.sh [OUTDIR]     # default: tests/data
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=${1:-$here/../data}
LAB=${AKB_LAB:-/var/tmp/akb-lab}
export SLURM_CONF=${SLURM_CONF:-$LAB/slurm.conf}
mkdir -p "$out"
out=$(cd "$out" && pwd)

SQUEUE_FMT='%i|%j|%T|%r|%S|%e'
SACCT_FIELDS=JobIDRaw,JobName,State,ExitCode,Start,End,Elapsed,Reason
UNKNOWN_ID=999999

state_of() { # squeue state of one job ("" once it has left squeue)
    local s
    s=$(squeue --noheader -t all -j "$1" -o %T 2>/dev/null) || true
    echo "$s"
}
wait_state() { # JOBID STATE [TIMEOUT]
    local i
    for (( i = 0; i < ${3:-120} * 5; i++ )); do
        [[ $(state_of "$1") == "$2" ]] && return 0
        sleep 0.2
    done
    echo "job $1 did not reach $2 (now '$(state_of "$1")')" >&2
    return 1
}
sacct_done() { # all listed jobs in a final state in sacct
    local s
    s=$(sacct -X -n -P -j "$1" -o State 2>/dev/null) || return 1
    [[ $(wc -l <<<"$s") -eq $2 ]] || return 1
    ! grep -qE 'PENDING|RUNNING|REQUEUED|SUSPENDED|COMPLETING' <<<"$s"
}
# run_err NAME CMD...: stdout must be empty; record stderr and exit code.
run_err() {
    local name=$1 rc=0 so
    shift
    so=$(LC_ALL=C "$@" 2>"$out/$name.stderr.txt") || rc=$?
    [[ -z $so ]] || { echo "$name: unexpected stdout: $so" >&2; exit 1; }
    echo "$rc" >"$out/$name.exitcode.txt"
}

sb() { sbatch --parsable -p "${AKB_SLURM_PARTITION:-debug}" -o /dev/null "$@"; }

# 1. A job that succeeds; its sbatch --parsable output is kept verbatim.
sbatch --parsable -p "${AKB_SLURM_PARTITION:-debug}" -o /dev/null -J akb-true --wrap true \
    >"$out/sbatch_parsable.txt"
j_true=$(cut -d';' -f1 "$out/sbatch_parsable.txt")
# 2. A job that exits 3.
j_exit3=$(sb -J akb-exit3 --wrap 'exit 3')
# 3. A job cancelled by scancel while running.
j_cancel=$(sb -J akb-cancelled --wrap 'sleep 300')
wait_state "$j_cancel" RUNNING
sleep 1
scancel "$j_cancel"
# 4. A job running (sleep 5) while we take the live snapshots, 5. a job pending behind it
#    (Reason=Dependency, it runs `true` afterwards), 6. a held job (Reason=JobHeldUser) that is
#    cancelled while still pending.
wait_state "$j_true" COMPLETED
wait_state "$j_exit3" FAILED
wait_state "$j_cancel" CANCELLED
j_sleep=$(sb -J akb-sleep5 --wrap 'sleep 5')
j_dep=$(sb -J akb-pending-dep --dependency=afterany:"$j_sleep" --wrap true)
j_held=$(sb -J akb-pending-held --hold --wrap true)
wait_state "$j_sleep" RUNNING
sleep 1
ids="$j_true,$j_exit3,$j_cancel,$j_sleep,$j_dep,$j_held"
n_ids=6

# Only this script's jobs: others may be running jobs as root on the shared test cluster.
filter_ids() { awk -F'|' -v ids="$ids" 'BEGIN { split(ids, a, ","); for (i in a) k[a[i]] = 1 } ($1 in k)'; }

squeue --noheader -t all -u root -o "$SQUEUE_FMT" | filter_ids >"$out/squeue_all_live.txt"
sacct -X -n -P -j "$ids" -o "$SACCT_FIELDS" >"$out/sacct_live.txt"

scancel "$j_held"
for (( i = 0; i < 300; i++ )); do
    sacct_done "$ids" "$n_ids" && break
    sleep 0.2
done
sacct_done "$ids" "$n_ids" || { echo "jobs $ids did not all finish" >&2; exit 1; }

squeue --noheader -t all -u root -o "$SQUEUE_FMT" | filter_ids >"$out/squeue_all_final.txt"
sacct -X -n -P -j "$ids" -o "$SACCT_FIELDS" >"$out/sacct_final.txt"
scontrol show job -o "$j_true" >"$out/scontrol_show_job_completed.txt"
scontrol show job -o "$j_exit3" >"$out/scontrol_show_job_failed.txt"
scontrol show job -o "$j_cancel" >"$out/scontrol_show_job_cancelled.txt"
rc=0
squeue --noheader --jobs="$j_exit3" -o "$SQUEUE_FMT" >"$out/squeue_jobs_finished.txt" || rc=$?
[[ $rc == 0 ]] || { echo "squeue --jobs=$j_exit3 exited $rc" >&2; exit 1; }

run_err scontrol_show_job_unknown scontrol show job -o "$UNKNOWN_ID"
run_err squeue_jobs_unknown squeue --jobs="$UNKNOWN_ID"
run_err sbatch_invalid_partition sbatch --parsable -p no_such_partition --wrap true

cat >"$out/README.txt" <<EOF
# Real Slurm command outputs, fixtures for the parser unit tests.
#
# Recorded $(date -u +%Y-%m-%dT%H:%M:%SZ) by tests/cluster/record_parser_data.sh on the
# single-node test cluster of tests/cluster/setup.sh ($(sinfo -V), cluster akblab,
# partition debug, node $(hostname -s), user root, TZ=$(date +%Z): squeue/sacct/scontrol print
# local times without a zone). Re-record with: bash tests/cluster/record_parser_data.sh
#
# Each *.txt is the exact stdout of one command (bytes as printed, trailing newline
# included); for error cases <case>.stderr.txt is the exact stderr (stdout was empty) and
# <case>.exitcode.txt the exit status.
#
# Jobs (all submitted as: sbatch --parsable -p debug -o /dev/null -J <name> ...):
#   $j_true  akb-true          --wrap true                          -> COMPLETED 0:0
#   $j_exit3  akb-exit3         --wrap 'exit 3'                      -> FAILED 3:0
#   $j_cancel  akb-cancelled     --wrap 'sleep 300', scancel'ed while RUNNING -> CANCELLED
#         (note: sacct -X says State "CANCELLED by 0", ExitCode 0:0; scontrol says ExitCode=0:15;
#         the 0:15 is on the .batch step in sacct without -X)
#   $j_sleep  akb-sleep5        --wrap 'sleep 5'                     -> RUNNING in *_live, then COMPLETED
#   $j_dep  akb-pending-dep   --dependency=afterany:$j_sleep --wrap true -> PENDING (Dependency) in *_live, then COMPLETED
#   $j_held  akb-pending-held  --hold --wrap true                   -> PENDING (JobHeldUser) in *_live, then scancel'ed while pending
# The *_live files were taken while $j_sleep was running; *_final once sacct showed every job ended
# (sacct lags the controller by ~2 s).
#
# Files and the exact commands:
#   sbatch_parsable.txt                  sbatch --parsable -p debug -o /dev/null -J akb-true --wrap true
#   squeue_all_live.txt, squeue_all_final.txt
#                                        squeue --noheader -t all -u root -o '$SQUEUE_FMT'
#                                        (lines filtered to the job ids above, as others run root jobs
#                                        on the same cluster; squeue's order is kept)
#   sacct_live.txt, sacct_final.txt      sacct -X -n -P -j $ids -o $SACCT_FIELDS
#   scontrol_show_job_completed.txt      scontrol show job -o $j_true
#   scontrol_show_job_failed.txt         scontrol show job -o $j_exit3
#   scontrol_show_job_cancelled.txt      scontrol show job -o $j_cancel
#   squeue_jobs_finished.txt             squeue --noheader --jobs=$j_exit3 -o '$SQUEUE_FMT'
#                                        (a finished job still within MinJobAge=300 s: prints NOTHING and
#                                        exits 0 -- without -t all squeue hides finished jobs even by id)
#   scontrol_show_job_unknown.stderr.txt / .exitcode.txt
#                                        scontrol show job -o $UNKNOWN_ID   (no such job)
#   squeue_jobs_unknown.stderr.txt / .exitcode.txt
#                                        squeue --jobs=$UNKNOWN_ID   (no such job; a finished job gives the
#                                        same once purged after MinJobAge)
#   sbatch_invalid_partition.stderr.txt / .exitcode.txt
#                                        sbatch --parsable -p no_such_partition --wrap true
#
# sacct_usage*.txt (resource use, step lines included): see sacct_usage.README.txt, recorded by
# tests/cluster/record_usage_data.sh.
EOF
echo "recorded into $out:"
ls -l "$out"

#!/usr/bin/env bash
# Record sacct's resource use (MaxRSS, Elapsed, TotalCPU, step lines included) of a few jobs
# on the test cluster of tests/cluster/setup.sh (JobAcctGatherFrequency=task=1) into
# tests/data/sacct_usage*.txt, fixtures for the usage parser tests. Takes ~15 s.
#
#   bash tests/cluster/record_usage_data.sh [OUTDIR]     # default: tests/data
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"  # LAB
export SLURM_CONF=${SLURM_CONF:-$LAB/slurm.conf}
out=$(mkdir -p "${1:-$here/../data}" && cd "${1:-$here/../data}" && pwd)

# The bridge's own field list (runtimes/slurm/commands.py SACCT_FIELDS), without -X.
FIELDS=JobIDRaw,JobName,State,ExitCode,Start,End,Elapsed,Reason,MaxRSS,TotalCPU
ALLOC='import time; b = bytearray(%d * 1024 * 1024); time.sleep(%s)'

sb() { sbatch --parsable -p "${AKB_SLURM_PARTITION:-debug}" -o /dev/null "$@"; }
alloc() { printf "python3 -c '$ALLOC'" "$1" "$2"; }

# 1. 200 MiB held for 2 s in the batch step; 2. two srun steps (100 and 300 MiB) beside a
# small batch step: MaxRSS is the largest step's; 3. ~1.5 s of CPU (TotalCPU MM:SS.mmm);
# 4. exit 3 after 50 MiB; 5. held, then cancelled while pending (no steps, empty usage);
# 6. running (a sleep) while the live snapshot is taken.
j_mem=$(sb -J akb-mem200 --wrap "$(alloc 200 2)")
j_steps=$(sb -J akb-mem-steps --wrap "srun -n1 $(alloc 100 1); srun -n1 $(alloc 300 1)")
j_cpu=$(sb -J akb-cpu --wrap "python3 -c 'import time; t = time.process_time()
while time.process_time() - t < 1.5: pass'")
j_fail=$(sb -J akb-mem-exit3 --wrap "$(alloc 50 1); exit 3")
j_held=$(sb -J akb-held --hold --wrap true)
j_live=$(sb -J akb-sleep8 --wrap 'sleep 8')
ids="$j_mem,$j_steps,$j_cpu,$j_fail,$j_held,$j_live"

for (( i = 0; i < 100; i++ )); do
    [[ $(squeue -h -j "$j_live" -o %T 2>/dev/null) == RUNNING ]] && break
    sleep 0.2
done
sleep 2
sacct -n -P -j "$ids" -o "$FIELDS" >"$out/sacct_usage_live.txt"
scancel "$j_held"

done_() {
    local s
    s=$(sacct -X -n -P -j "$ids" -o State 2>/dev/null) || return 1
    [[ $(wc -l <<<"$s") -eq 6 ]] && ! grep -qE 'PENDING|RUNNING|REQUEUED|COMPLETING' <<<"$s"
}
for (( i = 0; i < 300; i++ )); do
    done_ && break
    sleep 0.2
done
done_ || { echo "jobs $ids did not all finish" >&2; exit 1; }
sleep 1
sacct -n -P -j "$ids" -o "$FIELDS" >"$out/sacct_usage.txt"

cat >"$out/sacct_usage.README.txt" <<EOF
# sacct resource use, recorded $(date -u +%Y-%m-%dT%H:%M:%SZ) by tests/cluster/record_usage_data.sh
# ($(sinfo -V), JobAcctGatherType=jobacct_gather/linux, JobAcctGatherFrequency=task=1).
#
#   sacct_usage_live.txt   sacct -n -P -j $ids -o $FIELDS   (while $j_live ran, $j_held pending)
#   sacct_usage.txt        the same once every job had ended
#
# Jobs (sbatch --parsable -p debug -o /dev/null -J <name> --wrap ...):
#   $j_mem  akb-mem200     python allocates 200 MiB, sleeps 2 s        -> COMPLETED
#   $j_steps  akb-mem-steps  srun steps .0 (100 MiB) and .1 (300 MiB)     -> COMPLETED
#   $j_cpu  akb-cpu        ~1.5 s of CPU                              -> COMPLETED
#   $j_fail  akb-mem-exit3  50 MiB, then exit 3                        -> FAILED 3:0
#   $j_held  akb-held       --hold, scancel'ed while pending           -> CANCELLED, no steps
#   $j_live  akb-sleep8     sleep 8 (RUNNING in the live snapshot)     -> COMPLETED
EOF
echo "recorded into $out:"
ls -l "$out"/sacct_usage*

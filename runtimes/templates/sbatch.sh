#!/bin/bash
#SBATCH --job-name={token}
#SBATCH --output={jobdir}/slurm-%j.out
#SBATCH --error={jobdir}/slurm-%j.err
#SBATCH --chdir={jobdir}
#SBATCH --cpus-per-task={cpus}
{memory}{tmp}#SBATCH --time={time}
#SBATCH --no-requeue
#SBATCH --comment=akobridge:{workflow}/{activity}
{scheduling}# akobridge: workflow {workflow} (id {workflow_id}), activity {activity}, attempt {attempt}
trap 'exit 129' HUP; trap 'exit 130' INT; trap 'exit 143' TERM  # before the EXIT trap, or a signal can end the job with exit code 0 or miss its command
export AKB_JOBDIR={q_jobdir}
akb_start=$(date +%s.%N)
trap 'akb_rc=$?; printf "%s %s %s %s %s\n" "$akb_rc" "$akb_start" "$(date +%s.%N)" "${{SLURM_JOB_ID:--}}" {token} > "$AKB_JOBDIR/exitcode.tmp"; mv -f "$AKB_JOBDIR/exitcode.tmp" "$AKB_JOBDIR/exitcode"' EXIT
{prologue}{env}{command}

#!/usr/bin/env python3
"""Submission throughput: akobridge versus a plain ``sbatch`` loop, side by side in one run.

    python bench/submit_throughput.py [--n 200] [--rounds 2]

Phases alternate (raw, bridge, raw, bridge, ...) on the same Slurm cluster and the same
transport (local subprocesses), with the queue drained before every phase, so that warm-up of
slurmctld, slurmdbd and the page cache does not favour either side. The best and the median of
each side are compared.

raw     N trivial job scripts (``#!/bin/bash`` + ``true``), each submitted with
        ``sbatch --parsable --output=<own file>`` from a Python loop (subprocess.run, as the
        bridge's local transport does). Submission = first sbatch → last job id; end-to-end =
        first sbatch → every job has left squeue (polled every --raw-poll seconds).
bridge  one AkoFlow workflow of N independent activities (``run: "true"``) through an
        in-process Bridge on configs/devslurm.yaml (fresh store and job directory per round).
        Submission = ``bridge.submit()`` → every activity has a Slurm job id; end-to-end =
        ``bridge.submit()`` → the workflow is COMPLETED (also: → its jobs left squeue). The
        cycle loop is driven here, mirroring ``Bridge.run`` (same idle sleep, same per-cycle
        active-workflow query), so cycles and controller calls per cycle can be counted.

Goals (docs: /work/shared/DESIGN.md, "Targets" and "Following jobs"): submission ≥ 0.9× raw;
≤ 1 squeue and ≤ 1 sacct per cycle. Prints PASS/MISS; never fails the build.
If the submission ratio misses its goal (or with --profile) one extra, unscored bridge round runs
under cProfile and the top functions by cumulative time during submission are printed.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import (  # noqa: F401 - re-exported for anything importing them from here
    LAB,
    REPO,
    dbd_queue,
    fmt,
    machine_facts,
    median,
    profile_text,
    queued_ids,
    settle,
    sh,
    slurm_env,
    verdict,
    wait_gone,
    wait_queue_empty,
    workflow_yaml,
)

from bridge import logs
from bridge.runner import Bridge
from bridge.spec import parse_akoflow
from bridge.store import Store
from runtimes.config import ClusterConfig, Clusters, load_cluster

RAW_NAME = "akbbench-raw"
CONTROLLER_CALLS = ("squeue", "sacct", "scontrol")


# -- raw sbatch loop -------------------------------------------------------------------------
@dataclass
class RawResult:
    submit_s: float
    e2e_s: float | None
    errors: int
    in_sbatch_s: float
    sbatch_ms: list[float] = field(default_factory=list)


def trivial_jobs(n: int, d: Path) -> list[list[str]]:
    """``#!/bin/bash`` + ``true``, each with its own --output: sbatch arguments per job."""
    argvs = []
    for i in range(n):
        p = d / f"job{i}.sh"
        p.write_text("#!/bin/bash\ntrue\n")
        argvs.append([f"--job-name={RAW_NAME}", f"--output={d}/job{i}.out", str(p)])
    return argvs


def bridge_shaped_jobs(n: int, d: Path, base: ClusterConfig, conf: str) -> list[list[str]]:
    """The very scripts (and command.sh files) the bridge renders for the benchmark workflow."""
    from runtimes.jobdir import SCRIPT_FILE
    from runtimes.render import render

    cluster = bench_cluster(base, d, conf)
    wf = parse_akoflow(workflow_yaml(n)).workflow.model_copy(update={"runtime": cluster.name})
    argvs = []
    for i, step in enumerate(wf.steps):
        jobdir = d / f"bench-0/{step.name}/1"
        r = render(wf, step, cluster, workflow_id=0, token=f"{RAW_NAME}-{i}", jobdir=str(jobdir),
                   attempt=1)
        jobdir.mkdir(parents=True)
        (jobdir / SCRIPT_FILE).write_text(r.script)
        for name, data in r.files.items():
            Path(name).write_bytes(data)
        argvs.append([str(jobdir / SCRIPT_FILE)])
    return argvs


def raw_round(argvs: list[list[str]], env: dict[str, str], poll: float,
              timeout: float) -> RawResult:
    ids: set[str] = set()
    errors = 0
    lat: list[float] = []
    t0 = time.perf_counter()
    for argv in argvs:
        t = time.perf_counter()
        res = subprocess.run(["sbatch", "--parsable", *argv], capture_output=True, env=env,
                             check=False)
        lat.append(time.perf_counter() - t)
        job_id = res.stdout.decode().strip().split(";")[0]
        if res.returncode != 0 or not job_id.isdigit():
            errors += 1
            continue
        ids.add(job_id)
    submit_s = time.perf_counter() - t0
    e2e = wait_gone(ids, env, t0, poll, timeout)
    return RawResult(submit_s, e2e, errors, sum(lat), [x * 1000 for x in lat])


# -- akobridge -------------------------------------------------------------------------------
@dataclass
class BridgeResult:
    submit_s: float | None
    done_s: float | None
    gone_s: float | None
    state: str
    cycles: int
    submit_cycles: int
    sbatch: int
    per_cycle: dict[str, list[int]] = field(default_factory=dict)
    cycle_cpu_ms: list[float] = field(default_factory=list)
    cycle_wall_ms: list[float] = field(default_factory=list)
    profile: str = ""
    in_sbatch_s: float | None = None
    sbatch_ms: list[float] = field(default_factory=list)


SUBMIT_CONCURRENCY: int | None = None


def bench_cluster(base: ClusterConfig, jobs: Path, conf: str) -> ClusterConfig:
    slurm = base.slurm
    if SUBMIT_CONCURRENCY is not None:
        slurm = slurm.model_copy(update={"submit_concurrency": SUBMIT_CONCURRENCY})
    return base.model_copy(update={"workdir": str(jobs), "slurm": slurm,
                                   "env": {**base.env, "SLURM_CONF": conf}})


def bridge_round(n: int, base: ClusterConfig, conf: str, env: dict[str, str], tmp: Path,
                 idle: float, poll: float, timeout: float, profile: bool = False) -> BridgeResult:
    state = tmp / f"bridge-{time.monotonic_ns()}"
    cluster = bench_cluster(base, state / "jobs", conf)
    store = Store(state / "akobridge.db")
    bridge = Bridge(store, Clusters([cluster]), state)
    wf = parse_akoflow(workflow_yaml(n)).workflow.model_copy(update={"runtime": cluster.name})
    db = store.db

    def missing_ids(wf_id: int) -> int:
        return int(db.execute("SELECT count(*) FROM activities WHERE workflow_id=?"
                              " AND job_id IS NULL", (wf_id,)).fetchone()[0])

    def wf_state(wf_id: int) -> str:
        return str(db.execute("SELECT state FROM workflows WHERE id=?", (wf_id,)).fetchone()[0])

    def calls() -> Counter[str]:
        rt = bridge.runtimes.get(cluster.name)
        return Counter(getattr(rt, "calls", {})) if rt is not None else Counter()

    # open the runtime now (a running daemon has it open already) and time each sbatch in it,
    # so that submission time splits into "inside sbatch" and "the bridge's own work"
    sbatch_s: list[float] = []
    rt = bridge.runtime(cluster.name)
    transport = getattr(rt, "transport", None)
    if transport is not None:
        inner = transport.run

        def timed_run(argv: list[str], **kw: Any) -> Any:
            t = time.perf_counter()
            try:
                return inner(argv, **kw)
            finally:
                if argv and argv[0] == "sbatch":
                    sbatch_s.append(time.perf_counter() - t)

        transport.run = timed_run
    prof = cProfile.Profile() if profile else None
    per_cycle: dict[str, list[int]] = {c: [] for c in CONTROLLER_CALLS}
    cpu_ms: list[float] = []
    wall_ms: list[float] = []
    submit_s = done_s = in_sbatch = None
    sbatch_ms: list[float] = []
    submit_cycles = 0
    deadline = time.monotonic() + timeout
    try:
        if prof:
            prof.enable()
        t0 = time.perf_counter()
        wf_id = bridge.submit(wf)
        while True:
            before = calls()
            c_wall, c_cpu = time.perf_counter(), time.process_time()
            changed = bridge.cycle()
            wall_ms.append((time.perf_counter() - c_wall) * 1000)
            cpu_ms.append((time.process_time() - c_cpu) * 1000)
            delta = calls() - before
            for c in CONTROLLER_CALLS:
                per_cycle[c].append(delta[c])
            if submit_s is None and missing_ids(wf_id) == 0:
                submit_s = time.perf_counter() - t0
                in_sbatch = sum(sbatch_s)
                sbatch_ms = [x * 1000 for x in sbatch_s]
                submit_cycles = len(wall_ms)
                if prof:
                    prof.disable()
            if wf_state(wf_id) != "RUNNING":
                done_s = time.perf_counter() - t0
                break
            # what Bridge.run does between cycles (its own cost belongs to the bridge)
            store.workflows(active_only=True, limit=1_000_000)
            if time.monotonic() > deadline:
                print(f"  ! bridge round timed out after {timeout:g} s", flush=True)
                break
            time.sleep(0.01 if changed else idle)
        job_ids = {str(r[0]) for r in db.execute(
            "SELECT job_id FROM attempts WHERE job_id IS NOT NULL")}
        gone_s = wait_gone(job_ids, env, t0, poll, timeout)
        final = wf_state(wf_id)
        sbatch = calls()["sbatch"]
    finally:
        if prof:
            prof.disable()
        bridge.close()
        store.close()
    text = profile_text(prof, 15)
    return BridgeResult(submit_s, done_s, gone_s, final, len(wall_ms), submit_cycles, sbatch,
                        per_cycle, cpu_ms, wall_ms, text, in_sbatch, sbatch_ms)


def own_work_profile(n: int, base: ClusterConfig, conf: str, tmp: Path) -> tuple[float, str]:
    """The bridge's own submission work with sbatch replaced by an instant stand-in.

    Nothing reaches Slurm: one ``submit()`` and one cycle, whose sbatch calls answer a made-up
    job id at once. Returns seconds per activity (profiled) and the top of the profile
    restricted to the project's code.
    """
    from runtimes.transport import Completed

    state = tmp / f"standin-{time.monotonic_ns()}"
    cluster = bench_cluster(base, state / "jobs", conf)
    store = Store(state / "akobridge.db")
    bridge = Bridge(store, Clusters([cluster]), state)
    wf = parse_akoflow(workflow_yaml(n)).workflow.model_copy(update={"runtime": cluster.name})
    rt = bridge.runtime(cluster.name)
    transport = getattr(rt, "transport", None)
    fake_ids = iter(range(10**8, 10**9))
    if transport is not None:
        inner = transport.run

        def standin(argv: list[str], **kw: Any) -> Any:
            if argv and argv[0] == "sbatch":
                return Completed(tuple(argv), 0, f"{next(fake_ids)}\n", "")
            return inner(argv, **kw)

        transport.run = standin
    prof = cProfile.Profile()
    try:
        t0 = time.perf_counter()
        prof.enable()
        bridge.submit(wf)
        bridge.cycle()
        prof.disable()
        per_act = (time.perf_counter() - t0) / n
    finally:
        bridge.close()
        store.close()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(r"/(bridge|runtimes)/", 15)
    return per_act, buf.getvalue()


# -- report ----------------------------------------------------------------------------------
def _row(label: str, best: float | None, med: float | None, spec: str = ".2f",
         goal: str = "") -> None:
    print(f"{label:<44}{fmt(best, spec):>9}{fmt(med, spec):>9}   {goal}".rstrip())


def report(n: int, raws: list[RawResult], bridges: list[BridgeResult],
           shaped: list[RawResult]) -> float:
    raw_rate = [n / r.submit_s for r in raws]
    br_rate = [n / b.submit_s for b in bridges if b.submit_s]
    sh_rate = [n / r.submit_s for r in shaped]
    raw_e2e = [r.e2e_s for r in raws if r.e2e_s is not None]
    br_done = [b.done_s for b in bridges if b.done_s is not None]
    br_gone = [b.gone_s for b in bridges if b.gone_s is not None]
    best_ratio = max(br_rate) / max(raw_rate) if br_rate and raw_rate else float("nan")
    med_ratio = median(br_rate) / median(raw_rate) if br_rate and raw_rate else float("nan")

    print()
    print(f"per round (N={n}; ms/job = submission time / N, of which inside sbatch)")
    print(f"  {'round':<6}{'side':<13}{'submit s':>9}{'jobs/s':>8}{'ms/job':>8}{'in sbatch':>10}"
          f"{'done s':>8}{'left squeue s':>14}{'cycles':>7}  notes")

    def raw_line(i: int, side: str, r: RawResult) -> None:
        print(f"  {i:<6}{side:<13}{r.submit_s:>9.2f}{n / r.submit_s:>8.1f}"
              f"{r.submit_s / n * 1000:>8.2f}{r.in_sbatch_s / n * 1000:>10.2f}{'':>8}"
              f"{fmt(r.e2e_s):>14}{'':>7}  {f'{r.errors} sbatch errors' if r.errors else ''}")

    for i in range(len(raws)):
        raw_line(i + 1, "raw", raws[i])
        if i < len(shaped):
            raw_line(i + 1, "raw-shaped", shaped[i])
        if i < len(bridges):
            b = bridges[i]
            ok = b.submit_s is not None
            print(f"  {i + 1:<6}{'akobridge':<13}{fmt(b.submit_s):>9}"
                  f"{fmt(n / b.submit_s if ok else None, '.1f'):>8}"
                  f"{fmt(b.submit_s / n * 1000 if ok else None):>8}"
                  f"{fmt(b.in_sbatch_s / n * 1000 if b.in_sbatch_s else None):>10}"
                  f"{fmt(b.done_s):>8}{fmt(b.gone_s):>14}{b.cycles:>7}  {b.state}, "
                  f"{b.sbatch} sbatch in {b.submit_cycles} cycle(s)")

    print()
    print(f"{'':<44}{'best':>9}{'median':>9}   goal")
    _row("raw sbatch loop, jobs/s", max(raw_rate), median(raw_rate), ".1f")
    if sh_rate:
        _row("raw loop of the bridge's scripts, jobs/s", max(sh_rate), median(sh_rate), ".1f")
    _row("akobridge submission, activities/s", max(br_rate, default=None), median(br_rate), ".1f")
    _row("ratio akobridge / raw", best_ratio, med_ratio, ".2f",
         f">= 0.90   {verdict(best_ratio >= 0.9)} (best) / {verdict(med_ratio >= 0.9)} (median)")
    if sh_rate:
        _row("ratio akobridge / raw loop of its scripts",
             max(br_rate, default=float("nan")) / max(sh_rate),
             median(br_rate) / median(sh_rate), ".2f", "(bridge's own cost only)")
    if SUBMIT_CONCURRENCY == 1:  # with sbatch calls overlapping, the split means nothing
        own = [(b.submit_s - b.in_sbatch_s) / n * 1000 for b in bridges
               if b.submit_s and b.in_sbatch_s is not None]
        _row("akobridge own work, ms per activity", min(own, default=None), median(own),
             ".2f", "(submission time outside sbatch)")
    br_sb = [b.in_sbatch_s / n * 1000 for b in bridges if b.in_sbatch_s]
    _row("sbatch wall ms per job: raw", min(r.in_sbatch_s / n * 1000 for r in raws),
         median([r.in_sbatch_s / n * 1000 for r in raws]))
    if shaped:
        _row("sbatch wall ms per job: raw-shaped", min(r.in_sbatch_s / n * 1000 for r in shaped),
             median([r.in_sbatch_s / n * 1000 for r in shaped]))
    _row("sbatch wall ms per job: inside akobridge", min(br_sb, default=None), median(br_sb))
    p50 = [("raw", raws), ("raw-shaped", shaped), ("inside akobridge", bridges)]
    for side, results in p50:
        meds = [median(r.sbatch_ms) for r in results if r.sbatch_ms]
        if meds:
            _row(f"sbatch p50 ms per call: {side}", min(meds), median(meds))
    _row("raw end-to-end s (all left squeue)", min(raw_e2e, default=None), median(raw_e2e))
    _row("akobridge end-to-end s (workflow done)", min(br_done, default=None), median(br_done))
    _row("akobridge end-to-end s (all left squeue)", min(br_gone, default=None), median(br_gone))
    for c in CONTROLLER_CALLS:
        xs = [x for b in bridges for x in b.per_cycle[c]]
        mx, mean = (max(xs), sum(xs) / len(xs)) if xs else (0, 0.0)
        goal = f"<= 1      {verdict(mx <= 1)}" if c != "scontrol" else ""
        _row(f"{c} calls per cycle (max / mean)", mx, mean, ".2f", goal)
    _row("cycles per bridge round", min(b.cycles for b in bridges),
         median([float(b.cycles) for b in bridges]), ".0f")
    cpu = [x for b in bridges for x in b.cycle_cpu_ms]
    if cpu:
        _row("bridge CPU ms per cycle (max / mean)", max(cpu), sum(cpu) / len(cpu), ".1f",
             "(this process; sbatch children excluded)")
    return best_ratio


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="jobs / activities per round")
    ap.add_argument("--rounds", type=int, default=2, help="raw+bridge pairs (alternating)")
    ap.add_argument("--cluster", type=Path, default=REPO / "configs" / "devslurm.yaml")
    ap.add_argument("--slurm-conf", default=str(LAB / "slurm.conf"))
    ap.add_argument("--idle", type=float, default=0.25,
                    help="sleep between cycles when nothing changed (Bridge.run's default)")
    ap.add_argument("--raw-poll", type=float, default=0.2,
                    help="squeue interval while waiting for jobs to leave the queue")
    ap.add_argument("--drain-timeout", type=float, default=300.0,
                    help="max wait for `squeue --me` to be empty before a phase")
    ap.add_argument("--settle", type=float, default=2.0,
                    help="pause after the queue is empty and accounting has caught up")
    ap.add_argument("--timeout", type=float, default=600.0, help="max seconds per phase")
    ap.add_argument("--shape-control", action="store_true",
                    help="add a third side per round: the raw loop over the bridge's own "
                         "rendered scripts (separates job-shape cost from bridge overhead)")
    ap.add_argument("--profile", action="store_true",
                    help="always run the extra cProfile'd bridge round")
    ap.add_argument("--no-profile", action="store_true", help="never profile")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--concurrency", type=int, default=None,
                    help="override slurm.submit_concurrency (sbatch calls in flight; "
                         "1 = strictly serial like the raw loop)")
    args = ap.parse_args()
    global SUBMIT_CONCURRENCY
    SUBMIT_CONCURRENCY = args.concurrency

    logs.configure("WARNING")  # as the daemon does by default; no per-job log lines
    env = slurm_env(args.slurm_conf)
    if not sh(["sinfo", "--noheader", "--format=%T"], env).strip():
        print(f"no Slurm cluster answers with SLURM_CONF={args.slurm_conf}: "
              "run `bash tests/cluster/setup.sh` first", file=sys.stderr)
        return 2
    base = load_cluster(args.cluster)
    tmp = Path(tempfile.mkdtemp(prefix="akb-bench-"))

    print("akobridge submission throughput benchmark")
    for line in machine_facts(env, args.slurm_conf):
        print(f"  {line}")
    print(f"  cluster config   {args.cluster.name} (poll_interval={base.slurm.poll_interval}s, "
          f"max_submit_per_minute={base.slurm.max_submit_per_minute}, "
          f"max_jobs_in_queue={base.slurm.max_jobs_in_queue}, submit_concurrency="
          f"{SUBMIT_CONCURRENCY or base.slurm.submit_concurrency}); idle sleep {args.idle}s")
    sides = "raw, raw-shaped, akobridge" if args.shape_control else "raw, akobridge"
    print(f"  N={args.n}, rounds={args.rounds} ({sides} alternating), tmp={tmp}", flush=True)

    raws: list[RawResult] = []
    shaped: list[RawResult] = []
    bridges: list[BridgeResult] = []
    try:
        for rnd in range(1, args.rounds + 1):
            phases = [("raw", raws)] + ([("raw-shaped", shaped)] if args.shape_control else [])
            for side, results in phases:
                settle(env, args.drain_timeout, f"before {side} round {rnd}", args.settle)
                d = tmp / f"{side}-{rnd}"
                d.mkdir()
                argvs = (bridge_shaped_jobs(args.n, d, base, args.slurm_conf)
                         if side == "raw-shaped" else trivial_jobs(args.n, d))
                print(f"round {rnd}: {side:<10} (load {os.getloadavg()[0]:4.2f}) ...", end=" ",
                      flush=True)
                r = raw_round(argvs, env, args.raw_poll, args.timeout)
                results.append(r)
                print(f"{args.n / r.submit_s:6.1f} jobs/s, all left squeue after "
                      f"{fmt(r.e2e_s)} s", flush=True)

            settle(env, args.drain_timeout, f"before akobridge round {rnd}", args.settle)
            print(f"round {rnd}: {'akobridge':<10} (load {os.getloadavg()[0]:4.2f}) ...", end=" ",
                  flush=True)
            b = bridge_round(args.n, base, args.slurm_conf, env, tmp, args.idle, args.raw_poll,
                             args.timeout)
            bridges.append(b)
            rate = args.n / b.submit_s if b.submit_s else None
            print(f"{fmt(rate, '6.1f')} activities/s, workflow {b.state} after "
                  f"{fmt(b.done_s)} s, {b.cycles} cycles", flush=True)

        ratio = report(args.n, raws, bridges, shaped)
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"load average at the end: {load} (other work on this machine adds noise; "
              "compare the per-round lines)")

        if not args.no_profile and (args.profile or not ratio >= 0.9):
            settle(env, args.drain_timeout, "before the profiled round", args.settle)
            print("\nprofile: one extra akobridge round under cProfile (not scored), from "
                  "submit() until every activity has a job id; top 15 by cumulative time")
            p = bridge_round(args.n, base, args.slurm_conf, env, tmp, args.idle, args.raw_poll,
                             args.timeout, profile=True)
            print(f"(profiled submission: {fmt(p.submit_s)} s, "
                  f"{fmt(args.n / p.submit_s if p.submit_s else None, '.1f')} activities/s)")
            print(p.profile.rstrip())
            per_act, text = own_work_profile(args.n, base, args.slurm_conf, tmp)
            print(f"\nown work: the same submission with sbatch replaced by an instant stand-in "
                  f"(nothing reaches Slurm): {per_act * 1000:.2f} ms per activity under cProfile;"
                  f" top 15 of the project's code by cumulative time")
            print(text.rstrip())
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

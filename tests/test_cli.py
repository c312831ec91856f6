"""The ``akobridge`` command line, run as a real subprocess on the embedded ``local`` runtime."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest

from bridge import __version__
from conftest import REPO, Receiver

HELLO = REPO / "examples" / "hello.yaml"
SEED = REPO / "tests" / "data" / "seed.yaml"
HELLO_STEPS = ["greet", "count-words", "count-lines", "summary"]

FAILING = """\
name: failing
spec:
  runtime: local
  activities:
    - name: first
      run: echo fine
    - name: boom
      run: |
        echo about to fail
        exit 3
      dependsOn: [first]
    - name: after
      run: echo never
      dependsOn: [boom]
"""

# every problem is on its own line: (field path, YAML line, a fragment of the message)
BAD = """\
name: "a;rm -rf /"
spec:
  runtime: local
  mountPath: /data/../etc
  activities:
    - name: "$(id)"
      run: echo hi
      cpulimit: 2
    - name: b
      run: echo b
      dependsOn: [nosuch]
      memoryLimit: 12Qi
    - name: c
      run: echo c
      mountPath: /my data
      dependsOn: [d]
    - name: d
      run: echo d
      dependsOn: [c]
    - name: "[/red]e"
      run: echo e
"""
BAD_PROBLEMS = [
    ("name", 1, "'a;rm -rf /'"),
    ("spec.mountPath", 4, "'..'"),
    ("spec.activities[0].name", 6, "'$(id)'"),
    ("spec.activities[0].cpulimit", 8, "unknown field 'cpulimit'; did you mean 'cpuLimit'?"),
    ("spec.activities[1].dependsOn[0]", 11, "'nosuch'"),
    ("spec.activities[1].memoryLimit", 12, "'12Qi'"),
    ("spec.activities[2].mountPath", 15, "'/my data'"),
    ("spec.activities[2].dependsOn", 16, "cycle: c -> d -> c"),
    ("spec.activities[4].name", 20, "'[/red]e'"),  # shown as is, not taken as markup
]


@dataclass
class Cli:
    """``python -m bridge`` with this test's own state and clusters directories."""

    state: Path
    clusters: Path
    tmp: Path

    def __call__(self, *args: str | Path, columns: int | None = None, use_env: bool = False,
                 timeout: float = 60) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("AKOBRIDGE_") and k not in ("COLUMNS", "LINES", "FORCE_COLOR")}
        env["PYTHONIOENCODING"] = "utf-8"
        if columns:
            env["COLUMNS"] = str(columns)  # keep table rows on one line each
        where: list[str] = []
        if use_env:
            env["AKOBRIDGE_STATE_DIR"] = str(self.state)
            env["AKOBRIDGE_CLUSTERS_DIR"] = str(self.clusters)
        else:
            where = ["--state-dir", str(self.state), "--clusters-dir", str(self.clusters)]
        return subprocess.run(
            [sys.executable, "-m", "bridge", *where, *map(str, args)],
            capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout,
        )

    def write(self, name: str, text: str) -> Path:
        path = self.tmp / name
        path.write_text(text, encoding="utf-8")
        return path

    def workflows(self) -> list[tuple[int, str, str]]:
        """(id, name, state) of every workflow in the store; none if there is no store."""
        db = self.state / "akobridge.db"
        if not db.exists():
            return []
        try:  # a run that just started may have created the file but not its tables yet
            with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
                return conn.execute("SELECT id, name, state FROM workflows ORDER BY id").fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" not in str(exc):
                raise
            return []


@pytest.fixture()
def cli(tmp_path: Path) -> Cli:
    (tmp_path / "clusters").mkdir()
    return Cli(tmp_path / "state", tmp_path / "clusters", tmp_path)


def table_rows(text: str) -> dict[str, list[str]]:
    """The body rows of the rich tables in ``text``, by their first cell."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("│"):
            cells = [c.strip() for c in line.strip().strip("│").split("│")]
            rows[cells[0]] = cells
    return rows


def no_traceback(res: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in res.stdout + res.stderr, res.stderr


def webhook(url: str) -> str:
    """``spec.runtime: local`` and a webhook to ``url`` (replaces a "  runtime: local" line)."""
    return f"  runtime: local\n  webhooks:\n    - name: rec\n      url: {url}\n"


def hooked(cli: Cli, url: str) -> Path:
    """examples/hello.yaml with a webhook."""
    text = HELLO.read_text(encoding="utf-8").replace("  runtime: local\n", webhook(url))
    assert url in text
    return cli.write("hooked.yaml", text)


def check_events(receiver: Receiver) -> None:
    got = receiver.requests
    assert [r.body["type"] for r in got] == ["ACTIVITY_COMPLETED"] * 4 + ["WORKFLOW_DONE"]
    names = [r.body["data"]["Name"] for r in got[:4]]
    assert names[0] == "greet" and names[3] == "summary"  # the DAG's order
    assert sorted(names) == sorted(HELLO_STEPS)
    for r in got[:4]:
        assert r.path == "/hook"
        assert r.headers["X-Akobridge-Event"] == "ACTIVITY_COMPLETED"
        assert r.body["data"]["WorkflowId"] == 1
        assert r.body["data"]["State"] == "COMPLETED" and r.body["data"]["ExitCode"] == 0
        assert r.body["data"]["Runtime"] == "local"
    done = got[4].body["data"]
    assert done["ID"] == 1 and done["Name"] == "hello" and done["State"] == "COMPLETED"
    assert done["Activities"] == {"COMPLETED": 4}
    ids = [int(r.headers["X-Akobridge-Delivery"]) for r in got]
    assert ids == sorted(ids) and len(set(ids)) == 5


# --- run, status, resume ----------------------------------------------------------------------


def test_run_hello_completes_and_status_shows_it(cli: Cli) -> None:
    res = cli("run", HELLO, "--webhook-wait", "5", columns=200)
    assert res.returncode == 0, res.stderr
    rows = table_rows(res.stdout)
    assert list(rows) == HELLO_STEPS
    for name, (_, state, exit_code, _dur, job, attempt, reason) in rows.items():
        assert (state, exit_code, attempt, reason) == ("COMPLETED", "0", "1", ""), name
        assert re.fullmatch(r"local-\d+", job), job
    assert len({r[4] for r in rows.values()}) == 4  # four distinct processes
    assert re.fullmatch(r"workflow #1 hello: COMPLETED \(4 done\) in \d+\.\d s",
                        res.stdout.rstrip().splitlines()[-1]), res.stdout
    assert "'hello' is #1 on local" in res.stderr
    assert cli.workflows() == [(1, "hello", "COMPLETED")]

    with ThreadPoolExecutor() as pool:  # commands that only read the store, side by side
        listing, one, again, missing = pool.map(lambda call: call(), [
            partial(cli, "status", columns=200),
            partial(cli, "status", "1", columns=200, use_env=True),  # dirs from the environment
            partial(cli, "resume"),
            partial(cli, "status", "99"),
        ])
    assert listing.returncode == 0, listing.stderr
    assert table_rows(listing.stdout)["1"][:4] == ["1", "hello", "local", "COMPLETED"]

    assert one.returncode == 0, one.stderr
    assert "#1 hello — COMPLETED" in one.stdout
    assert {n: r[1] for n, r in table_rows(one.stdout).items()} == dict.fromkeys(
        HELLO_STEPS, "COMPLETED")

    assert again.returncode == 0, again.stderr
    assert "nothing to resume" in again.stdout
    assert cli.workflows() == [(1, "hello", "COMPLETED")]  # nothing ran again

    assert missing.returncode == 2
    assert "no workflow with id 99" in missing.stderr
    no_traceback(missing)


def test_a_relative_state_dir_runs_its_jobs(tmp_path: Path) -> None:
    """``--state-dir st`` from the user's directory: the jobs find their scripts (they failed
    with ``job.sh: No such file or directory`` when the job dirs were relative)."""
    (tmp_path / "clusters").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AKOBRIDGE_")}
    res = subprocess.run([sys.executable, "-m", "bridge", "--state-dir", "st", "--clusters-dir",
                          "clusters", "run", str(HELLO), "--webhook-wait", "0"],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "hello: COMPLETED (4 done)" in res.stdout
    assert (tmp_path / "st" / "akobridge.db").is_file()


def test_failed_activity_fails_the_run_and_skips_its_dependent(cli: Cli,
                                                              receiver: Receiver) -> None:
    text = FAILING.replace("  runtime: local\n", webhook(receiver.url))
    res = cli("run", cli.write("failing.yaml", text), "--webhook-wait", "15", columns=200)
    assert res.returncode == 1, res.stderr
    rows = table_rows(res.stdout)
    assert rows["first"][1:3] == ["COMPLETED", "0"]
    assert rows["boom"][1:3] == ["FAILED", "3"]
    assert rows["after"][1] == "SKIPPED"
    assert rows["after"][4] == ""  # never submitted: no job
    assert "boom" in rows["after"][6]  # the reason names the failed parent
    assert res.stdout.rstrip().splitlines()[-1].startswith(
        "workflow #1 failing: FAILED (1 done · 1 failed · 1 skipped) in ")
    assert cli.workflows() == [(1, "failing", "FAILED")]
    no_traceback(res)

    # webhooks reached the receiver before `run` returned: one per final activity, in the
    # order they ended, then WORKFLOW_DONE
    assert "still pending" not in res.stderr
    assert receiver.seen == 4
    assert [(r.body["type"], r.body["data"].get("Name"), r.body["data"]["State"])
            for r in receiver.requests] == [
        ("ACTIVITY_COMPLETED", "first", "COMPLETED"),
        ("ACTIVITY_COMPLETED", "boom", "FAILED"),
        ("ACTIVITY_COMPLETED", "after", "SKIPPED"),
        ("WORKFLOW_DONE", "failing", "FAILED"),
    ]
    assert [r.headers["X-Akobridge-Event"] for r in receiver.requests] == [
        r.body["type"] for r in receiver.requests]
    assert receiver.requests[1].body["data"]["ExitCode"] == 3
    assert receiver.requests[3].body["data"]["Activities"] == {
        "COMPLETED": 1, "FAILED": 1, "SKIPPED": 1}


# --- validate ---------------------------------------------------------------------------------


def test_validate_reports_every_problem_on_its_own_line(cli: Cli) -> None:
    bad = cli.write("bad.yaml", BAD)
    res = cli("validate", bad)  # no COLUMNS: what a pipe or a CI log gets
    assert res.returncode == 2
    no_traceback(res)
    lines = res.stderr.splitlines()
    assert all(line.startswith("error: ") for line in lines), res.stderr  # nothing wrapped
    assert len(lines) == len(BAD_PROBLEMS), res.stderr
    for path, line_no, fragment in BAD_PROBLEMS:
        prefix = f"error: {bad}: {path} (line {line_no}): "
        matching = [line for line in lines if line.startswith(prefix)]
        assert len(matching) == 1, (prefix, res.stderr)
        assert fragment in matching[0], matching[0]
    assert res.stdout == ""

    ran = cli("run", bad)
    assert ran.returncode == 2
    no_traceback(ran)
    assert ran.stderr.splitlines() == lines
    assert cli.workflows() == []  # nothing stored, nothing started
    assert not (cli.state / "jobs").exists()


def test_seed_validates_with_a_warning_but_cannot_run_without_its_cluster(cli: Cli) -> None:
    res = cli("validate", SEED)
    assert res.returncode == 0, res.stderr
    assert "valid workflow 'p-inference-nemo' with 1 activities" in res.stdout
    warning = [line for line in res.stderr.splitlines() if "'sdumont'" in line]
    assert len(warning) == 1, res.stderr
    assert warning[0].startswith(f"warning: {SEED}: spec.runtime: no cluster config named")

    ran = cli("run", SEED)
    assert ran.returncode == 2
    no_traceback(ran)
    [error] = [line for line in ran.stderr.splitlines() if line.startswith("error:")]
    assert "spec.runtime" in error and "'sdumont'" in error
    assert cli.workflows() == []


# --- render -----------------------------------------------------------------------------------


def test_render_prints_one_script_per_activity(cli: Cli) -> None:
    res = cli("render", HELLO)
    assert res.returncode == 0, res.stderr
    parts = re.split(r"^# ---- (\S+) ----\n", res.stdout, flags=re.M)
    assert parts[0] == ""
    scripts = dict(zip(parts[1::2], parts[2::2], strict=True))
    assert list(scripts) == HELLO_STEPS
    for name, script in scripts.items():
        assert script.startswith("#!/bin/bash\n"), name
        assert script.count("#!/bin/bash") == 1
        assert re.search(r"^#SBATCH --job-name=akb-\S+$", script, re.M), script
        assert f"#SBATCH --comment=akobridge:hello/{name}\n" in script
    assert cli.workflows() == []  # nothing submitted


def test_render_for_a_container_cluster_needs_an_image(cli: Cli) -> None:
    (cli.clusters / "dev.yaml").write_text("name: dev\ncontainer: {engine: singularity}\n")
    text = "name: boxed\nspec:\n  runtime: dev\n{image}  activities:\n    - name: step-one\n" \
           "      run: echo hi\n"
    res = cli("render", cli.write("noimage.yaml", text.format(image="")))
    assert res.returncode == 2
    no_traceback(res)
    [error] = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert "activity step-one" in error and "image" in error

    image = "  image: docker://alpine:3.19\n"
    ok = cli("render", cli.write("image.yaml", text.format(image=image)))
    assert ok.returncode == 0, ok.stderr
    assert "singularity exec --bind " in ok.stdout
    # compute nodes have no internet: the job runs the copy pulled into the image cache
    from runtimes.images import cache_name

    cached = cache_name("docker://alpine:3.19")
    assert f" {cli.state}/jobs/images/{cached} /bin/bash" in ok.stdout


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(("content", "field"), [
    (b'name: dev\nslurm: {partition: "a b"}\n', "slurm.partition"),
    (b"name: dev\npartitoin: debug\n", "partitoin"),
    (b"name: d\xe9v\n", "cannot read"),
], ids=["bad-partition", "unknown-key", "not-utf8"])
def test_bad_cluster_config_is_named(cli: Cli, content: bytes, field: str) -> None:
    config = cli.clusters / "dev.yaml"
    config.write_bytes(content)
    res = cli("run", HELLO)
    assert res.returncode == 2, res.stderr
    no_traceback(res)
    assert any(line.startswith(f"error: {config}: {field}")
               for line in res.stderr.splitlines()), res.stderr
    assert cli.workflows() == []


def test_unreadable_workflow_files_exit_2(cli: Cli) -> None:
    missing = cli.tmp / "missing.yaml"
    res = cli("run", missing)
    assert res.returncode == 2
    no_traceback(res)
    assert res.stderr.startswith(f"error: {missing}: cannot read:")
    assert "No such file" in res.stderr

    latin1 = cli.tmp / "latin1.yaml"
    latin1.write_bytes(HELLO.read_bytes().replace(b"name: hello", b"name: h\xe9llo"))
    res = cli("run", latin1)
    assert res.returncode == 2
    no_traceback(res)
    assert res.stderr.startswith(f"error: {latin1}: cannot read:")
    assert "utf-8" in res.stderr.lower()
    assert cli.workflows() == []


def test_version(cli: Cli) -> None:
    res = cli("--version")
    assert res.returncode == 0
    assert res.stdout.strip() == f"akobridge, version {__version__}"


# --- webhooks ---------------------------------------------------------------------------------


def test_run_retries_webhooks_after_503(cli: Cli, receiver: Receiver) -> None:
    receiver.fail_first = 2
    started = time.monotonic()
    res = cli("run", hooked(cli, receiver.url), "--webhook-wait", "15")
    took = time.monotonic() - started
    assert res.returncode == 0, res.stderr
    assert "still pending" not in res.stderr
    assert receiver.seen == 7  # 2 refused + 5 accepted
    check_events(receiver)
    assert took < 10, f"two retries took {took:.1f} s"

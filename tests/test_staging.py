"""Data staging (runtimes.staging) on the real sshd of the test cluster, and with the local
transport; ``akobridge artifacts`` on the local runtime and over SSH."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

import pytest

from bridge.artifacts import ArtifactError, WorkflowFiles
from conftest import REPO, Harness, lab_cluster
from runtimes.config import ClusterConfig
from runtimes.ssh import SSHTransport
from runtimes.staging import (
    StageReport,
    StagingError,
    download,
    extract_tar,
    list_remote,
    stage_in,
    stage_out,
)
from runtimes.transport import Completed, LocalTransport, Transport

pytestmark = pytest.mark.slurm

MB = 1 << 20
OLD = 1_600_000_000  # an mtime in the past, so "kept" is visible


def make_tree(root: Path, small: int = 100, big_mb: int = 0) -> None:
    """``small`` files in nested directories (one 0755 script, one 0600 file), plus one
    ``big_mb`` MB file of random bytes."""
    for i in range(small):
        path = root / f"d{i % 7}" / f"s{i % 3}" / f"f{i:03d}.dat"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(50 + i * 13))
        os.utime(path, (OLD + i, OLD + i))
    script, secret = root / "d0" / "s0" / "f000.dat", root / "d1" / "s1" / "f001.dat"
    script.chmod(0o755)
    secret.chmod(0o600)
    if big_mb:
        with open(root / "big.bin", "wb") as f:
            for _ in range(big_mb // 4):
                f.write(os.urandom(4 * MB))


def digests(root: Path) -> dict[str, tuple[str, int, int]]:
    """relative path -> (sha256, permission bits, whole-second mtime) of every regular file."""
    out = {}
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            h = hashlib.sha256()
            with open(path, "rb") as f:
                while chunk := f.read(4 * MB):
                    h.update(chunk)
            st = path.stat()
            out[str(path.relative_to(root))] = (h.hexdigest(), st.st_mode & 0o7777,
                                                int(st.st_mtime))
    return out


@pytest.fixture()
def ssh(slurm_cluster: Path, tmp_path: Path) -> Iterator[SSHTransport]:
    transport = SSHTransport(lab_cluster("ssh", tmp_path))
    transport.connect()
    yield transport
    transport.close()


@pytest.fixture(params=["ssh", "local"])
def transport(request: pytest.FixtureRequest, slurm_cluster: Path,
              tmp_path: Path) -> Iterator[Transport]:
    t: Transport = (SSHTransport(lab_cluster("ssh", tmp_path)) if request.param == "ssh"
                    else LocalTransport())
    yield t
    t.close()


# -- stage in --------------------------------------------------------------------------------
def test_stage_in_100_files_and_100_mb_over_ssh(ssh: SSHTransport, tmp_path: Path) -> None:
    src, dst = tmp_path / "bridge-side", tmp_path / "cluster" / "data"
    make_tree(src, small=100, big_mb=100)
    want = digests(src)
    total = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())

    t0 = time.monotonic()
    report = stage_in(ssh, str(src), str(dst))
    elapsed = time.monotonic() - t0

    assert report == StageReport(files_total=101, files_sent=101, bytes_sent=total)
    assert digests(dst) == want  # contents, permissions and mtimes
    assert digests(dst)["d0/s0/f000.dat"][1] == 0o755
    assert digests(dst)["d1/s1/f001.dat"][1] == 0o600
    assert digests(dst)["d2/s2/f002.dat"][2] == OLD + 2
    print(f"\nstage_in over SSH: {total / MB:.1f} MiB, 101 files in {elapsed:.2f} s = "
          f"{total / MB / elapsed:.0f} MiB/s")
    assert elapsed < 20

    t0 = time.monotonic()
    assert stage_in(ssh, str(src), str(dst)) == StageReport(101, 0, 0)
    assert time.monotonic() - t0 < 2  # one listing, no transfer
    assert ssh.connects == 1


def test_stage_in_sends_only_what_changed(transport: Transport, tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src, small=30)
    assert stage_in(transport, str(src), str(dst)).files_sent == 30
    assert stage_in(transport, str(src), str(dst)) == StageReport(30, 0, 0)

    (src / "d3" / "s0" / "f003.dat").write_bytes(b"changed")  # size and mtime change
    (src / "d3" / "new" / "added.txt").parent.mkdir()
    (src / "d3" / "new" / "added.txt").write_bytes(b"added\n")
    report = stage_in(transport, str(src), str(dst))
    assert report == StageReport(31, 2, len(b"changed") + len(b"added\n"))
    assert digests(dst) == digests(src)

    (src / "d4" / "s1" / "f004.dat").chmod(0o700)  # a chmod alone is a change too
    assert stage_in(transport, str(src), str(dst)).files_sent == 1
    assert digests(dst) == digests(src)


def test_stage_in_missing_source_and_symlinks(transport: Transport, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist on the bridge host"):
        stage_in(transport, str(tmp_path / "nope"), str(tmp_path / "dst"))
    src = tmp_path / "src"
    src.mkdir()
    (src / "real.txt").write_text("real")
    (src / "link.txt").symlink_to("/etc/hostname")
    (src / "linkdir").symlink_to("/etc")
    assert stage_in(transport, str(src), str(tmp_path / "dst")) == StageReport(1, 1, 4)
    assert sorted(os.listdir(tmp_path / "dst")) == ["real.txt"]  # links are skipped


def test_stage_in_unwritable_target_says_why(transport: Transport, tmp_path: Path) -> None:
    make_tree(tmp_path / "src", small=3, big_mb=4)
    with pytest.raises(StagingError, match="upload to /proc/akb/x failed: mkdir: cannot create"):
        stage_in(transport, str(tmp_path / "src"), "/proc/akb/x")
    assert transport.run(["echo", "ok"]).stdout == "ok\n"


def test_list_remote(ssh: SSHTransport, tmp_path: Path) -> None:
    assert list_remote(ssh, str(tmp_path / "absent")) == {}
    odd = tmp_path / "tree" / "with space" / "tab\there"
    odd.parent.mkdir(parents=True)
    odd.write_bytes(b"12345")
    odd.chmod(0o640)
    os.utime(odd, (OLD + 0.75, OLD + 0.75))
    listing = list_remote(ssh, str(tmp_path / "tree"))
    assert listing == {"with space/tab\there": (5, OLD, 0o640)}


# -- stage out -------------------------------------------------------------------------------
def test_stage_out_brings_back_changes(transport: Transport, tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src, small=40)
    stage_in(transport, str(src), str(dst))
    assert stage_out(transport, str(dst), str(src)) == StageReport(40, 0, 0)

    job = (  # what a job does on the cluster: change one file, add three
        'cd "$1" && echo more >> d5/s2/f005.dat && mkdir -p results/deep && '
        'seq 1 1000 > results/deep/numbers.txt && printf x > results/one && '
        'cp d0/s0/f000.dat results/run.sh && chmod 0750 results/run.sh'
    )
    res = transport.run(["bash", "-c", job, "_", str(dst)])
    assert res.ok, res.stderr
    report = stage_out(transport, str(dst), str(src))
    assert (report.files_total, report.files_sent) == (43, 4)
    assert digests(src) == digests(dst)
    assert digests(src)["results/run.sh"][1] == 0o750
    assert stage_out(transport, str(dst), str(src)) == StageReport(43, 0, 0)


def test_stage_out_into_missing_dir_and_from_missing_target(transport: Transport,
                                                            tmp_path: Path) -> None:
    assert stage_out(transport, str(tmp_path / "absent"), str(tmp_path / "back")) == \
        StageReport(0, 0, 0)
    make_tree(tmp_path / "remote", small=5)
    report = stage_out(transport, str(tmp_path / "remote"), str(tmp_path / "new" / "back"))
    assert report.files_sent == 5
    assert digests(tmp_path / "new" / "back") == digests(tmp_path / "remote")


def test_local_same_path_copies_nothing(tmp_path: Path) -> None:
    src = tmp_path / "data"
    make_tree(src, small=10)
    before = digests(src)
    local = LocalTransport()
    assert stage_in(local, str(src), f"{src}/./") == StageReport(10, 0, 0)
    assert stage_out(local, str(src), f"{tmp_path}/x/../data") == StageReport(10, 0, 0)
    assert digests(src) == before
    assert not [p for p in src.rglob(".akb-stage-*")]


# -- refusing unsafe tar streams -------------------------------------------------------------
def crafted_tar(*names: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in names:
            info = tarfile.TarInfo(name)
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))
    return buf.getvalue()


class CannedTar(Transport):
    """The real transport, but every stream() is ``cat`` of one tar file on the cluster."""

    def __init__(self, inner: Transport, tar_path: str) -> None:
        self.inner, self.tar_path = inner, tar_path

    def run(self, argv: Sequence[str], *, stdin: bytes | None = None,
            timeout: float = 60.0) -> Completed:
        return self.inner.run(argv, stdin=stdin, timeout=timeout)

    def run_many(self, argvs: Sequence[Sequence[str]], *, concurrency: int = 1,
                 retry: bool = True) -> list[Completed]:
        return self.inner.run_many(argvs, concurrency=concurrency, retry=retry)

    def stream(self, argv: Sequence[str], *, stdin: BinaryIO | None = None,
               stdout: BinaryIO | None = None, timeout: float = 3600.0) -> Completed:
        return self.inner.stream(["cat", self.tar_path], stdout=stdout, timeout=timeout)

    def write_files(self, files: Mapping[str, bytes], *, mode: int = 0o644) -> None:
        self.inner.write_files(files, mode=mode)

    def read_files(self, paths: Iterable[str]) -> dict[str, bytes | None]:
        return self.inner.read_files(paths)


@pytest.mark.parametrize("evil", ["../x", "ok/../../x", "/tmp/akb-evil-abs"])
def test_download_refuses_path_traversal(ssh: SSHTransport, tmp_path: Path, evil: str) -> None:
    canned = tmp_path / "cluster" / "evil.tar"
    canned.parent.mkdir()
    # a big harmless member first: the refusal must drain the stream, not hang the channel
    big = tmp_path / "big"
    big.write_bytes(os.urandom(5 * MB))
    with tarfile.open(canned, "w") as tar:
        tar.add(big, "first.bin")
        info = tarfile.TarInfo(evil)
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
        tar.add(big, "after.bin")
    local = tmp_path / "out" / "root"
    with pytest.raises(StagingError, match="refusing tar member"):
        download(CannedTar(ssh, str(canned)), "/anything", ["first.bin"], str(local))
    assert not (tmp_path / "out" / "x").exists() and not (tmp_path / "x").exists()
    assert not Path("/tmp/akb-evil-abs").exists()
    assert not (local / "after.bin").exists()
    assert ssh.run(["echo", "still", "fine"]).stdout == "still fine\n"  # connection intact


def test_extract_refuses_writing_through_a_symlink(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "esc").symlink_to(outside)
    with pytest.raises(StagingError, match="is a symlink"):
        extract_tar(io.BytesIO(crafted_tar("esc/x")), str(root))
    assert list(outside.iterdir()) == []
    files, size = extract_tar(io.BytesIO(crafted_tar("./a/b", "c")), str(root))
    assert (files, size) == (2, 8) and (root / "a" / "b").read_bytes() == b"evil"


# -- akobridge artifacts ---------------------------------------------------------------------
ARTS = """\
name: arts
spec:
  runtime: {runtime}
  mountPath: {mount}
  volumes: ["{vsrc}:{vdst}"]
  activities:
    - name: make
      run: |
        mkdir -p out && echo result > out/r.txt && echo top > top.txt
    - name: again
      run: echo again
      dependsOn: [make]
"""


def akobridge(tmp_path: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AKOBRIDGE_")}
    env["COLUMNS"] = "200"
    (tmp_path / "clusters").mkdir(exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "bridge", "--state-dir", str(tmp_path / "state"),
         "--clusters-dir", str(tmp_path / "clusters"), *map(str, args)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )


def test_artifacts_cli_on_the_local_runtime(tmp_path: Path) -> None:
    mount, vsrc, vdst = tmp_path / "mnt", tmp_path / "vsrc", tmp_path / "vdst"
    mount.mkdir()
    vsrc.mkdir()
    (vsrc / "input.txt").write_text("input\n")
    wf = tmp_path / "arts.yaml"
    wf.write_text(ARTS.format(runtime="local", mount=mount, vsrc=vsrc, vdst=vdst))
    res = akobridge(tmp_path, "run", wf, "--webhook-wait", "0")
    assert res.returncode == 0, res.stderr

    res = akobridge(tmp_path, "artifacts", "1")
    assert res.returncode == 0, res.stderr
    listed = [ln.split("│")[1].strip() for ln in res.stdout.splitlines() if ln.startswith("│")]
    [instance] = (tmp_path / "state" / "jobs").iterdir()  # <workdir>/<bridge instance>/…
    jobdir = instance / "arts-1" / "make" / "1"
    for path in (jobdir / "command.sh", jobdir / "job.sh", mount / "out" / "r.txt",
                 mount / "top.txt"):
        assert str(path) in listed, res.stdout
    assert str(instance / "arts-1" / "again" / "1" / "job.sh") in listed

    got = tmp_path / "got"
    res = akobridge(tmp_path, "artifacts", "1", "--get", "out", "--to", got)
    assert res.returncode == 0, res.stderr
    assert (got / "out" / "r.txt").read_text() == "result\n"
    res = akobridge(tmp_path, "artifacts", "1", "--get", jobdir / "command.sh", "--to", got)
    assert res.returncode == 0, res.stderr
    assert (got / "command.sh").read_bytes() == (jobdir / "command.sh").read_bytes()
    assert (got / "command.sh").stat().st_mode & 0o777 == (jobdir / "command.sh").stat(
        ).st_mode & 0o777

    for bad, message in [("/etc/passwd", "not under"), ("../x", "not under"),
                         ("nosuch.txt", "no such file"), ("job.sh", "ambiguous")]:
        res = akobridge(tmp_path, "artifacts", "1", "--get", bad)
        assert res.returncode == 2, (bad, res.stdout, res.stderr)
        assert message in res.stderr and "Traceback" not in res.stderr
    res = akobridge(tmp_path, "artifacts", "42")
    assert res.returncode == 2 and "no workflow with id 42" in res.stderr


def test_artifacts_over_ssh(slurm_cluster: Path, harness: Callable[[ClusterConfig], Harness],
                            tmp_path: Path) -> None:
    """WorkflowFiles (what the CLI runs) on a workflow run on Slurm over SSH."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    (tmp_path / "vsrc").mkdir()
    (tmp_path / "vsrc" / "in.txt").write_text("in\n")
    h = harness(lab_cluster("ssh", tmp_path))
    wf_id = h.submit(ARTS.format(runtime="devslurm", mount=mount, vsrc=tmp_path / "vsrc",
                                 vdst=tmp_path / "vdst"))
    h.run(wf_id)
    assert h.states(wf_id) == {"make": "COMPLETED", "again": "COMPLETED"}
    files = WorkflowFiles(h.store, h.bridge, wf_id)
    paths = {a.path for a in files.list()}
    assert {str(mount / "out" / "r.txt"), str(mount / "top.txt")} <= paths
    assert any(p.endswith("/make/1/job.sh") for p in paths)
    assert files.get("top.txt", tmp_path / "got") == (1, 4)
    assert (tmp_path / "got" / "top.txt").read_text() == "top\n"
    with pytest.raises(ArtifactError, match="not under"):
        files.get(str(REPO / "README.md"), tmp_path / "got")

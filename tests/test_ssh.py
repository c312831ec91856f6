"""The SSH transport against the real sshd on 127.0.0.1:2222: one connection, reconnection
without lost or doubled jobs, host keys always verified."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest
from test_crash_recovery import slurm_jobs_named

from conftest import LAB, Harness, lab_cluster, slurm
from runtimes.config import ClusterConfig, SSHSettings
from runtimes.ssh import HostKeyError, SSHTransport

pytestmark = pytest.mark.slurm
SSHD_LOG = LAB / "ssh" / "sshd.log"


def accepted_logins(fingerprint: str) -> int:
    """sshd's "Accepted publickey" lines for one client key (other logins not counted)."""
    return sum(1 for line in SSHD_LOG.read_text(errors="replace").splitlines()
               if "Accepted publickey" in line and line.endswith(fingerprint))


@pytest.fixture()
def ssh_cluster(slurm_cluster: Path, tmp_path: Path) -> ClusterConfig:
    return lab_cluster("ssh", tmp_path)


def with_ssh(cluster: ClusterConfig, **changes: object) -> ClusterConfig:
    assert cluster.ssh is not None
    return cluster.model_copy(update={"ssh": cluster.ssh.model_copy(update=changes)})


@pytest.fixture()
def own_key(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A client key of this test's own, authorized on the lab sshd while the test runs."""
    key = tmp_path / "id_test"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    pub = Path(f"{key}.pub").read_text()
    fp = subprocess.run(["ssh-keygen", "-lf", str(key)], capture_output=True, text=True,
                        check=True).stdout.split()[1]
    authorized = LAB / "ssh" / "authorized_keys"
    original = authorized.read_text()
    authorized.write_text(original + pub)
    yield key, fp
    authorized.write_text(original)


def test_fifty_activities_use_one_connection(harness, ssh_cluster: ClusterConfig,
                                             own_key: tuple[Path, str]) -> None:
    key, fp = own_key
    h: Harness = harness(with_ssh(ssh_cluster, key_file=str(key)))
    acts = "".join(f"    - name: s{i}\n      run: sleep 2\n" for i in range(50))
    wf_id = h.submit(f"name: wide\nspec:\n  activities:\n{acts}")
    h.run(wf_id)
    assert set(h.states(wf_id).values()) == {"COMPLETED"}
    runtime = h.bridge.runtimes["devslurm"]
    assert runtime.transport.connects == 1
    time.sleep(0.3)  # sshd writes its log line asynchronously
    assert accepted_logins(fp) == 1
    assert runtime.calls["sbatch"] == 50


def _session_processes() -> list[int]:
    master = int((LAB / "ssh" / "sshd.pid").read_text())
    out = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_killed_ssh_session_reconnects_and_runs_everything_once(
    harness, ssh_cluster: ClusterConfig,
) -> None:
    h: Harness = harness(ssh_cluster)
    lanes = "".join(
        f"    - name: j{i}\n      run: sleep 1\n"
        + (f"      dependsOn: [j{i - 4}]\n" if i >= 4 else "")
        for i in range(16)
    )
    wf_id = h.submit(f"name: lanes\nspec:\n  activities:\n{lanes}")
    kills: list[int] = []

    def killer() -> None:
        for delay in (2.0, 3.0):
            time.sleep(delay)
            for pid in _session_processes():
                os.kill(pid, signal.SIGKILL)
                kills.append(pid)

    thread = threading.Thread(target=killer)
    thread.start()
    h.run(wf_id, timeout=180)
    thread.join()
    assert kills, "no sshd session was killed"
    assert set(h.states(wf_id).values()) == {"COMPLETED"}
    assert h.bridge.runtimes["devslurm"].transport.connects >= 2
    prefix = f"akb-{h.store.instance}-{wf_id}-"
    deadline = time.monotonic() + 15
    while len(names := slurm_jobs_named(prefix)) < 16 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(names) == 16 and set(names.values()) == {1}, names


def _other_key_line(host_id: str) -> str:
    key = paramiko.Ed25519Key.from_private_key_file(  # any key that is not the server's
        str(LAB / "ssh" / "id_ed25519"))
    return f"{host_id} {key.get_name()} {key.get_base64()}\n"


def test_unknown_host_key_is_refused(ssh_cluster: ClusterConfig, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    transport = SSHTransport(with_ssh(ssh_cluster, known_hosts=str(empty)))
    with pytest.raises(HostKeyError) as err:
        transport.connect()
    message = str(err.value)
    assert "[127.0.0.1]:2222" in message and f"is not in {empty}" in message
    assert "refusing to connect" in message and "ssh-keyscan -p 2222 127.0.0.1" in message
    assert "SHA256:" in message


def test_changed_host_key_is_refused(ssh_cluster: ClusterConfig, tmp_path: Path) -> None:
    wrong = tmp_path / "known_hosts"
    wrong.write_text(_other_key_line("[127.0.0.1]:2222"))
    with pytest.raises(HostKeyError, match="has CHANGED"):
        SSHTransport(with_ssh(ssh_cluster, known_hosts=str(wrong))).connect()


def test_pinned_fingerprint(ssh_cluster: ClusterConfig) -> None:
    keygen = subprocess.run(["ssh-keygen", "-lf", str(LAB / "ssh" / "ssh_host_ed25519_key.pub")],
                            capture_output=True, text=True, check=True)
    pinned = keygen.stdout.split()[1]  # "256 SHA256:... comment (ED25519)"
    good = SSHTransport(with_ssh(ssh_cluster, known_hosts="/nonexistent",
                                 host_key_fingerprint=pinned))
    assert good.run(["echo", "pinned"]).stdout == "pinned\n"
    good.close()
    other = "SHA256:" + "A" * 43
    with pytest.raises(HostKeyError, match="not the pinned"):
        SSHTransport(with_ssh(ssh_cluster, host_key_fingerprint=other)).connect()


def test_no_accept_any_key_default() -> None:
    assert SSHSettings(host="h").host_key_fingerprint is None
    source = (Path(__file__).parent.parent / "runtimes" / "ssh.py").read_text()
    assert "AutoAddPolicy" not in source and "StrictHostKeyChecking=no" not in source


def test_proxy_jump(ssh_cluster: ClusterConfig) -> None:
    transport = SSHTransport(with_ssh(ssh_cluster, proxy_jump="root@127.0.0.1:2222"))
    assert transport.run(["sbatch", "--version"]).stdout.startswith("slurm")
    transport.close()


def test_commands_are_batched_in_one_round_trip(ssh_cluster: ClusterConfig) -> None:
    transport = SSHTransport(ssh_cluster)
    transport.connect()
    results = transport.run_many([["echo", "a b"], ["sh", "-c", "echo err >&2; exit 3"],
                                  ["printf", "%s", "ünï ✓"]])
    assert [(r.returncode, r.stdout, r.stderr) for r in results] == [
        (0, "a b\n", ""), (3, "", "err\n"), (0, "ünï ✓", "")]
    files = {"/tmp/akb-ssh-test/a/x": b"\x00\xffbinary", "/tmp/akb-ssh-test/b/y": b"two"}
    transport.write_files(files)
    assert transport.read_files([*files, "/tmp/akb-ssh-test/missing"]) == {
        **files, "/tmp/akb-ssh-test/missing": None}
    assert transport.connects == 1
    transport.close()
    slurm("sinfo", "-h")  # the cluster is still fine

"""SSH hardening against the real sshd on 127.0.0.1:2222 (and a second real sshd as a jump
host): per-call timeouts on one connection, no reruns of timed-out commands, refusals
(host keys, logins) never retried, bounded connect rounds, pulls after the prologue, distinct
image cache names."""

from __future__ import annotations

import hashlib
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_cluster_isolation import black_hole  # noqa: F401 - a fixture
from test_ssh import _other_key_line, with_ssh

from conftest import LAB, lab_cluster
from runtimes.check import check_cluster
from runtimes.config import ClusterConfig, ContainerSettings, SSHSettings
from runtimes.images import cache_name, image_path, prepare_images
from runtimes.ssh import AuthRefused, HostKeyError, SSHTransport
from runtimes.transport import (
    CommandTimedOut,
    LocalTransport,
    Transport,
    TransportError,
    TransportRefused,
)

pytestmark = pytest.mark.slurm
HOST_PUB = LAB / "ssh" / "ssh_host_ed25519_key.pub"


def key_fingerprint(pub: Path) -> str:
    out = subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True,
                         check=True)
    return out.stdout.split()[1]


@pytest.fixture()
def ssh_cluster(slurm_cluster: Path, tmp_path: Path) -> ClusterConfig:
    return lab_cluster("ssh", tmp_path)


@pytest.fixture()
def transports() -> Iterator[list[Transport]]:
    made: list[Transport] = []
    yield made
    for t in made:
        t.close()


def ssh(made: list[Transport], cluster: ClusterConfig, **changes: object) -> SSHTransport:
    t = SSHTransport(with_ssh(cluster, **changes) if changes else cluster)
    made.append(t)
    return t


# -- 1. per-call timeouts -------------------------------------------------------------------
def test_call_timeout_above_command_timeout_succeeds_on_one_connection(
        ssh_cluster: ClusterConfig, transports: list[Transport]) -> None:
    t = ssh(transports, ssh_cluster, command_timeout=2.0)
    started = time.monotonic()
    res = t.run(["sh", "-c", "sleep 4; echo done"], timeout=10)
    assert (res.returncode, res.stdout) == (0, "done\n")
    assert 4 <= time.monotonic() - started < 8
    assert t.connects == 1 and t.attempts == 1
    assert t.run(["echo", "again"]).stdout == "again\n"
    assert t.connects == 1


def test_command_past_its_timeout_is_stopped_and_not_rerun(
        ssh_cluster: ClusterConfig, transports: list[Transport], tmp_path: Path) -> None:
    t = ssh(transports, ssh_cluster, command_timeout=2.0)
    runs = tmp_path / "runs"
    started = time.monotonic()
    with pytest.raises(CommandTimedOut) as err:
        t.run(["sh", "-c", f"echo run >> {runs}; exec sleep 37.25"], timeout=3)
    took = time.monotonic() - started
    assert 3 <= took < 8, took
    assert "did not finish within 3 s" in str(err.value) and "not run again" in str(err.value)
    assert runs.read_text() == "run\n"  # ran once, never re-sent
    assert subprocess.run(["pgrep", "-f", "sleep 37.25"], capture_output=True).returncode == 1
    assert t.run(["echo", "still here"]).stdout == "still here\n"
    assert t.connects == 1  # the remote shell stopped it: the connection was kept
    with pytest.raises(CommandTimedOut, match="within 2 s"):  # the default: command_timeout
        t.run(["sleep", "5"])


def test_batch_commands_are_each_bounded_by_command_timeout(
        ssh_cluster: ClusterConfig, transports: list[Transport]) -> None:
    t = ssh(transports, ssh_cluster, command_timeout=2.0)
    started = time.monotonic()
    fast, slow, after = t.run_many([["echo", "a"], ["sleep", "30"], ["echo", "b"]])
    assert time.monotonic() - started < 6
    assert (fast.stdout, slow.returncode, after.stdout) == ("a\n", 124, "b\n")
    assert t.connects == 1


# -- 4. the jump host is checked in known_hosts, the pin is the login node's ------------------
def test_pin_applies_to_the_login_node_only(ssh_cluster: ClusterConfig,
                                            transports: list[Transport],
                                            tmp_path: Path) -> None:
    pin = key_fingerprint(HOST_PUB)
    known = str(LAB / "ssh" / "known_hosts")
    good = ssh(transports, ssh_cluster, proxy_jump="root@127.0.0.1:2222", known_hosts=known,
               host_key_fingerprint=pin)
    assert good.run(["echo", "via jump"]).stdout == "via jump\n"
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    unknown_jump = ssh(transports, ssh_cluster, proxy_jump="root@127.0.0.1:2222",
                       known_hosts=str(empty), host_key_fingerprint=pin)
    with pytest.raises(HostKeyError) as err:
        unknown_jump.connect()
    assert str(err.value).startswith("host key of jump host [127.0.0.1]:2222")
    assert "pins only the login node" in str(err.value)
    assert unknown_jump.attempts == 1


@pytest.fixture()
def jump_sshd(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A second real sshd on 127.0.0.1 with a host key of its own: (port, its known_hosts)."""
    d = tmp_path / "jump"
    d.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "hostkey")],
                   check=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'hostkey'}\n"
        f"PidFile {d / 'sshd.pid'}\nPermitRootLogin prohibit-password\n"
        "PubkeyAuthentication yes\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        f"AuthorizedKeysFile {LAB / 'ssh' / 'authorized_keys'}\nUseDNS no\n")
    proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(d / "sshd_config")],
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("the jump sshd did not start")
            time.sleep(0.1)
    key = (d / "hostkey.pub").read_text().split()
    known = d / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {key[0]} {key[1]}\n")  # the jump host's key only
    yield port, known
    proc.terminate()
    proc.wait(10)


def test_jump_host_with_its_own_key_and_a_pinned_login_node(
        ssh_cluster: ClusterConfig, transports: list[Transport],
        jump_sshd: tuple[int, Path]) -> None:
    port, known = jump_sshd
    pin = key_fingerprint(HOST_PUB)
    assert pin != key_fingerprint(known.parent / "hostkey.pub")
    t = ssh(transports, ssh_cluster, proxy_jump=f"root@127.0.0.1:{port}",
            known_hosts=str(known), host_key_fingerprint=pin)
    assert t.run(["sbatch", "--version"]).stdout.startswith("slurm")
    assert t.connects == 1
    wrong_pin = ssh(transports, ssh_cluster, proxy_jump=f"root@127.0.0.1:{port}",
                    known_hosts=str(known), host_key_fingerprint="SHA256:" + "A" * 43)
    with pytest.raises(HostKeyError, match=r"^host key of \[127.0.0.1\]:2222 .*not the pinned"):
        wrong_pin.connect()
    assert wrong_pin.attempts == 1


# -- 5. refusals are raised at once ---------------------------------------------------------
def refused_once(t: SSHTransport, kind: type[TransportRefused]) -> str:
    started = time.monotonic()
    with pytest.raises(kind) as err:
        t.connect()
    assert isinstance(err.value, TransportRefused)
    assert t.attempts == 1 and t.connects == 0
    assert time.monotonic() - started < 5
    return str(err.value)


def test_wrong_key_is_refused_at_once(ssh_cluster: ClusterConfig, transports: list[Transport],
                                      tmp_path: Path) -> None:
    stranger = tmp_path / "id_stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)],
                   check=True)
    t = ssh(transports, ssh_cluster, key_file=str(stranger), use_agent=False)
    message = refused_once(t, AuthRefused)
    assert "login node [127.0.0.1]:2222 refused the login as root" in message
    assert "check ssh.user and ssh.key_file" in message


def test_wrong_user_is_refused_at_once(ssh_cluster: ClusterConfig,
                                       transports: list[Transport]) -> None:
    t = ssh(transports, ssh_cluster, user="akb-no-such-user", use_agent=False)
    assert "as akb-no-such-user" in refused_once(t, AuthRefused)


def test_unreadable_key_file_is_refused(ssh_cluster: ClusterConfig,
                                        transports: list[Transport], tmp_path: Path) -> None:
    t = ssh(transports, ssh_cluster, key_file=str(tmp_path / "absent"))
    assert "cannot be read" in refused_once(t, AuthRefused)


def test_jump_host_login_refused_at_once(ssh_cluster: ClusterConfig,
                                         transports: list[Transport]) -> None:
    t = ssh(transports, ssh_cluster, proxy_jump="akb-no-such-user@127.0.0.1:2222",
            use_agent=False)
    assert "jump host [127.0.0.1]:2222 refused the login as akb-no-such-user" in refused_once(
        t, AuthRefused)


def test_changed_host_keys_refused_at_once(ssh_cluster: ClusterConfig,
                                           transports: list[Transport],
                                           tmp_path: Path) -> None:
    wrong = tmp_path / "known_hosts"
    wrong.write_text(_other_key_line("[127.0.0.1]:2222"))
    target = ssh(transports, ssh_cluster, known_hosts=str(wrong))
    assert "has CHANGED" in refused_once(target, HostKeyError)
    jump = ssh(transports, ssh_cluster, known_hosts=str(wrong),
               proxy_jump="root@127.0.0.1:2222")
    assert refused_once(jump, HostKeyError).startswith(
        "host key of jump host [127.0.0.1]:2222 has CHANGED")
    empty = tmp_path / "empty"
    empty.write_text("")
    assert "is not in" in refused_once(ssh(transports, ssh_cluster, known_hosts=str(empty)),
                                       HostKeyError)


# -- 6. bounded connect rounds --------------------------------------------------------------
def test_black_holed_host_fails_within_the_total_timeout(
        ssh_cluster: ClusterConfig, transports: list[Transport],
        black_hole: int) -> None:  # noqa: F811 - the fixture
    defaults = SSHSettings(host="127.0.0.1")
    assert (defaults.connect_timeout, defaults.connect_total_timeout,
            defaults.reconnect_attempts) == (15.0, 20.0, 3)
    t = ssh(transports, ssh_cluster, port=black_hole, connect_timeout=defaults.connect_timeout,
            connect_total_timeout=defaults.connect_total_timeout,
            reconnect_attempts=defaults.reconnect_attempts)
    started = time.monotonic()
    with pytest.raises(TransportError) as err:
        t.run(["true"])
    took = time.monotonic() - started
    assert not isinstance(err.value, TransportRefused)
    assert 15 <= took <= 22, took  # attempt 1 waits 15 s for a banner, attempt 2 the rest
    assert t.attempts == 2 and "the next round tries again" in str(err.value)


def test_refused_port_retries_a_few_times_then_again_next_round(
        ssh_cluster: ClusterConfig, transports: list[Transport]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # nothing listens there once the socket is closed
    t = ssh(transports, ssh_cluster, port=closed)
    started = time.monotonic()
    with pytest.raises(TransportError, match=r"3 attempts in \d+ s"):
        t.connect()
    assert t.attempts == 3 and time.monotonic() - started < 3
    with pytest.raises(TransportError):
        t.connect()
    assert t.attempts == 6


# -- 2. pulls and checks run after the prologue ---------------------------------------------
def with_prologue_engine(cluster: ClusterConfig, tmp_path: Path,
                         prologue: bool = True) -> ClusterConfig:
    """Singularity exists only once the prologue ran (as after ``module load``)."""
    tools = tmp_path / "modules" / "singularity" / "bin"
    tools.mkdir(parents=True, exist_ok=True)
    engine = tools / "singularity"
    engine.write_text(
        "#!/bin/sh\n"
        'case "$1" in\n'
        "  --version) echo 'singularity-ce version 4.1.0 (prologue stand-in)' ;;\n"
        "  pull) printf 'image of %s\\n' \"$3\" > \"$2\" ;;\n"
        "  *) exit 97 ;;\n"
        "esac\n")
    engine.chmod(0o755)
    return cluster.model_copy(update={
        "prologue": f'export PATH="{tools}:$PATH"\n' if prologue else "",
        "container": ContainerSettings(engine="singularity",
                                       image_cache=str(tmp_path / "cache")),
    })


def transport_for(cluster: ClusterConfig, made: list[Transport]) -> Transport:
    t: Transport = SSHTransport(cluster) if cluster.transport == "ssh" else LocalTransport(
        cluster.env)
    made.append(t)
    return t


def test_pull_runs_after_the_prologue(devslurm: ClusterConfig, transports: list[Transport],
                                      tmp_path: Path) -> None:
    image = "docker://alpine:3.20"
    bare = with_prologue_engine(devslurm, tmp_path, prologue=False)
    [problem] = prepare_images(transport_for(bare, transports), bare, [image])
    assert "cannot pull docker://alpine:3.20" in problem and "prologue" in problem
    cluster = with_prologue_engine(devslurm, tmp_path)
    assert prepare_images(transport_for(cluster, transports), cluster, [image]) == []
    assert Path(image_path(image, cluster)).read_text() == f"image of {image}\n"
    assert not Path(image_path(image, cluster) + ".part").exists()
    rows = {name: (ok, detail) for name, ok, detail in check_cluster(cluster)}
    assert rows["container engine"] == (True, "singularity-ce version 4.1.0 (prologue stand-in)")


# -- 3. one cache name per image URI --------------------------------------------------------
def test_image_cache_names_are_distinct_readable_and_stable(
        ssh_cluster: ClusterConfig) -> None:
    uris = ["docker://foo/bar", "library://foo/bar", "docker://foo_bar", "docker://foo-bar",
            "docker://foo/bar:latest", "oras://foo/bar"]
    names = [cache_name(u) for u in uris]
    assert len(set(names)) == len(uris), names
    digest = hashlib.sha256(b"docker://foo/bar").hexdigest()[:12]
    assert names[0] == f"docker-foo_bar-{digest}.sif"
    assert names[1].startswith("library-foo_bar-")
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+\.sif", n) for n in names)
    assert cache_name("docker://" + "x" * 500).__len__() < 120
    cluster = ssh_cluster.model_copy(update={
        "container": ContainerSettings(engine="singularity", image_cache="/scratch/images")})
    assert image_path("docker://foo/bar", cluster) == f"/scratch/images/{names[0]}"
    assert image_path("/scratch/own.sif", cluster) == "/scratch/own.sif"

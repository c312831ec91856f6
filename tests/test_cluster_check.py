"""``akobridge cluster check`` on the real test Slurm and sshd, and the shipped cluster configs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from conftest import REPO, SLURM_CONF
from runtimes.check import ClusterCheck, check_cluster, open_transport, passed
from runtimes.config import DAEMON_CONFIG_NAMES, ClusterConfig, Clusters, load_cluster
from runtimes.transport import Completed

CONFIGS = REPO / "configs"
FAKE_ENGINE = 'singularity() { echo "singularity-ce version 3.11.4 (prologue stand-in)"; }\n'


def akobridge(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AKOBRIDGE_")}
    env.update(COLUMNS="250", PYTHONIOENCODING="utf-8", SLURM_CONF=SLURM_CONF)
    return subprocess.run([sys.executable, "-m", "bridge", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def rows(stdout: str) -> dict[str, tuple[str, str]]:
    """The table's rows: check → (status mark, detail)."""
    out = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if line.startswith("│") and len(cells) == 3:
            out[cells[0]] = (cells[1], cells[2])
    return out


def write_config(directory: Path, base: str, **changes: object) -> Path:
    """configs/<base>.yaml with top-level or dotted (``ssh.known_hosts``) fields changed."""
    data = yaml.safe_load((CONFIGS / f"{base}.yaml").read_text())
    data["name"] = data["name"] + "-t"
    data.pop("aliases", None)
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            data.setdefault(section, {})[field] = value
        else:
            data[section] = value
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# --- the shipped configs ----------------------------------------------------------------------


def test_every_shipped_config_loads_and_no_name_or_alias_clashes() -> None:
    files = sorted(f for f in CONFIGS.glob("*.yaml") if f.name not in DAEMON_CONFIG_NAMES)
    assert {f.name for f in files} >= {"devslurm.yaml", "devslurm-ssh.yaml", "sdumont.yaml"}
    assert len(Clusters.from_dir(CONFIGS).names()) >= len(files)  # bridge.yaml is skipped
    owner: dict[str, str] = {}
    for path in files:
        cfg = load_cluster(path)
        for key in {cfg.name, *cfg.aliases}:
            assert owner.setdefault(key, cfg.name) == cfg.name, (key, path)
    assert owner["sdumont"] == owner["hpc"] == "sdumont"


def test_sdumont_example_is_a_remote_singularity_deployment() -> None:
    cfg = load_cluster(CONFIGS / "sdumont.yaml")
    assert cfg.transport == "ssh" and cfg.ssh is not None
    assert cfg.ssh.host == "login.sdumont.lncc.br" and cfg.ssh.user and cfg.ssh.key_file
    assert cfg.ssh.known_hosts and cfg.ssh.proxy_jump is None  # the jump host is commented out
    assert "proxy_jump:" in (CONFIGS / "sdumont.yaml").read_text()
    assert cfg.workdir and cfg.workdir.startswith("/scratch/")
    assert cfg.container.engine == "singularity" and "--cleanenv" in cfg.container.exec_flags
    assert cfg.container.image_cache and cfg.container.image_cache.startswith("/scratch/")
    assert "module load singularity" in cfg.prologue
    s = cfg.slurm
    assert (s.partition, s.accounting, s.poll_interval) == ("sequana_cpu_dev", "auto", 10)
    assert s.account and s.qos and s.max_jobs_in_queue < 1000 and s.max_submit_per_minute < 600


# --- the CLI on the real cluster --------------------------------------------------------------


@pytest.mark.slurm
@pytest.mark.parametrize("name", ["devslurm", "devslurm-ssh"])
def test_check_of_the_dev_cluster_passes(slurm_cluster: Path, name: str) -> None:
    res = akobridge("cluster", "check", name, "--clusters-dir", "configs")
    assert res.returncode == 0, res.stdout + res.stderr
    table = rows(res.stdout)
    for check in ("sbatch", "squeue", "accounting", "partition", "workdir"):
        assert table[check][0] == "✓", (check, res.stdout)
    assert table["sbatch"][1].startswith("slurm-wlm 22.05")
    assert table["partition"][1] == "debug"
    assert table["container engine"][0] == "!"  # engine none: not checked, not a failure
    last = res.stdout.strip().splitlines()[-1]
    if name == "devslurm-ssh":
        assert table["ssh connection"][0] == table["host key"][0] == "✓"
        assert last == "ssh: 1 connection(s) opened, 5 remote commands in 1 round trip"
    else:
        assert table["connection"][0] == "✓"
        assert last == "local transport: no SSH connection, 6 commands run here in one batch"
    assert res.stderr == ""


def test_unknown_cluster_exits_2_with_the_known_names(tmp_path: Path) -> None:
    res = akobridge("cluster", "check", "nosuch", "--clusters-dir", "configs")
    assert res.returncode == 2
    assert "no cluster config named 'nosuch'" in res.stderr
    assert "devslurm-ssh" in res.stderr and "sdumont" in res.stderr


def _known_hosts_line(public_openssh: str) -> str:
    return f"[127.0.0.1]:2222 {public_openssh}\n"


@pytest.mark.slurm
def test_unknown_host_key_is_refused_with_the_documented_message(slurm_cluster: Path,
                                                                 tmp_path: Path) -> None:
    import paramiko

    other = paramiko.ECDSAKey.generate()  # a key for the right host, but not the server's
    known = tmp_path / "known_hosts"
    known.write_text(_known_hosts_line(f"{other.get_name()} {other.get_base64()}"))
    clusters = tmp_path / "clusters"
    write_config(clusters, "devslurm-ssh", ssh__known_hosts=str(known))
    res = akobridge("cluster", "check", "devslurm-ssh-t", "--clusters-dir", clusters)
    assert res.returncode == 1, res.stdout + res.stderr
    table = rows(res.stdout)
    assert table["ssh connection"][0] == table["host key"][0] == "✗"
    assert "sbatch" not in table  # nothing runs on an unverified host
    [line] = [ln for ln in res.stderr.splitlines() if ln.startswith("✗ host key: ")]
    assert f"is not in {known}: refusing to connect" in line
    assert f"ssh-keyscan -p 2222 127.0.0.1 >> {known}" in line
    assert res.stdout.strip().splitlines()[-1].startswith("ssh: 0 connection(s) opened")


@pytest.mark.slurm
def test_changed_host_key_is_refused(slurm_cluster: Path, tmp_path: Path) -> None:
    public = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    known = tmp_path / "known_hosts"
    known.write_text(_known_hosts_line(public))  # same key type as the server, other key
    clusters = tmp_path / "clusters"
    write_config(clusters, "devslurm-ssh", ssh__known_hosts=str(known))
    res = akobridge("cluster", "check", "devslurm-ssh-t", "--clusters-dir", clusters)
    assert res.returncode == 1
    [line] = [ln for ln in res.stderr.splitlines() if ln.startswith("✗ host key: ")]
    assert "has CHANGED" in line and "refusing to connect" in line and "ssh-keygen -R" in line


@pytest.mark.slurm
@pytest.mark.parametrize("base", ["devslurm", "devslurm-ssh"])
def test_unwritable_workdir_fails_the_check(slurm_cluster: Path, tmp_path: Path,
                                            base: str) -> None:
    write_config(tmp_path / "clusters", base, workdir="/proc/akb")
    res = akobridge("cluster", "check", f"{base}-t", "--clusters-dir", tmp_path / "clusters")
    assert res.returncode == 1, res.stdout + res.stderr
    assert rows(res.stdout)["workdir"][0] == "✗"
    assert rows(res.stdout)["sbatch"][0] == "✓"  # the rest still ran, in the same batch
    [line] = [ln for ln in res.stderr.splitlines() if ln.startswith("✗ ")]
    assert line.startswith("✗ workdir: /proc/akb cannot be created or written: exit 1")


@pytest.mark.slurm
def test_missing_partition_and_failing_prologue_fail(slurm_cluster: Path,
                                                     tmp_path: Path) -> None:
    write_config(tmp_path / "clusters", "devslurm",
                 slurm={"partition": "nosuch", "accounting": "auto"},
                 prologue="module load singularity\n")
    res = akobridge("cluster", "check", "devslurm-t", "--clusters-dir", tmp_path / "clusters")
    assert res.returncode == 1
    failed = {ln.split(":")[0] for ln in res.stderr.splitlines() if ln.startswith("✗ ")}
    assert failed == {"✗ partition", "✗ prologue"}, res.stderr
    assert "partition 'nosuch' not found" in res.stderr
    assert "module: command not found" in res.stderr


# --- runtimes/check.py directly ---------------------------------------------------------------


def lab_ssh(tmp_path: Path, **changes: object) -> ClusterConfig:
    base = load_cluster(CONFIGS / "devslurm-ssh.yaml")
    return base.model_copy(update={"workdir": str(tmp_path / "jobs"), **changes})


@pytest.mark.slurm
def test_the_whole_ssh_check_uses_one_connection_and_one_round_trip(slurm_cluster: Path,
                                                                    tmp_path: Path) -> None:
    base = lab_ssh(tmp_path)
    cfg = base.model_copy(update={
        "prologue": FAKE_ENGINE,  # like `module load singularity`: the engine comes with it
        "container": base.container.model_copy(update={
            "engine": "singularity", "image_cache": str(tmp_path / "cache" / "images")}),
    })
    transport = open_transport(cfg)
    check = ClusterCheck(cfg, transport)
    try:
        result = check.run()
    finally:
        transport.close()
    assert passed(result), result
    assert [r[0] for r in result] == [
        "ssh connection", "host key", "sbatch", "squeue", "accounting", "partition",
        "container engine", "workdir", "image cache", "prologue"]
    assert all(ok for _, ok, _ in result)
    assert dict((n, d) for n, _, d in result)["container engine"] == (
        "singularity-ce version 3.11.4 (prologue stand-in)")
    assert (tmp_path / "cache" / "images").is_dir() and not list((tmp_path / "jobs").iterdir())
    assert transport.connects == 1 and check.round_trips == 1 and len(check.commands) == 8
    assert check.summary() == "ssh: 1 connection(s) opened, 8 remote commands in 1 round trip"


@pytest.mark.slurm
def test_a_missing_engine_is_a_failure_naming_the_prologue(slurm_cluster: Path,
                                                          tmp_path: Path) -> None:
    base = lab_ssh(tmp_path)
    cfg = base.model_copy(update={"container": base.container.model_copy(
        update={"engine": "apptainer"})})
    result = {n: (ok, d) for n, ok, d in check_cluster(cfg)}
    ok, detail = result["container engine"]
    assert ok is False and "exit 127" in detail and "prologue" in detail
    assert result["image cache"][0] is True


def _sacct_row(accounting: str, res: Completed) -> tuple[bool | None, str]:
    cfg = load_cluster(CONFIGS / "devslurm.yaml")
    cfg = cfg.model_copy(update={"slurm": cfg.slurm.model_copy(
        update={"accounting": accounting})})
    _, ok, detail = ClusterCheck(cfg, open_transport(cfg))._sacct(res)
    return ok, detail


def test_missing_accounting_is_a_warning_with_auto_and_a_failure_with_sacct() -> None:
    argv = ("sacct", "-n")
    disabled = Completed(argv, 1, "", "sacct: error: Slurm accounting storage is disabled\n")
    assert _sacct_row("auto", disabled)[0] is None
    assert _sacct_row("sacct", disabled) == (
        False, "slurm.accounting is sacct but accounting storage is disabled")
    assert _sacct_row("auto", Completed(argv, 0, "123\n", ""))[0] is True
    assert passed([("accounting", None, "warning")]) and not passed([("x", False, "")])

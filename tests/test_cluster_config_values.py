"""Cluster configs are checked with the same functions as workflows (``runtimes.safety``):
names, aliases, env keys, work directories. Each bad file is refused by every command with
exit 2 and a message naming the file and the field, never a traceback."""

from __future__ import annotations

import pytest
from test_cli import HELLO, Cli, no_traceback

from runtimes.config import ClusterConfig, ClusterConfigError, Clusters

OK = "kind: slurm\ntransport: local\nworkdir: /scratch/akb\n"


@pytest.fixture()
def cli(tmp_path):  # type: ignore[no-untyped-def]
    (tmp_path / "clusters").mkdir()
    return Cli(tmp_path / "state", tmp_path / "clusters", tmp_path)


# (id, {file name: text}, a fragment of the message)
BAD: list[tuple[str, dict[str, str], str]] = [
    ("alias-shadows-local", {"a.yaml": OK + "aliases: [local]\n"}, "alias 'local' is reserved"),
    ("alias-bad-chars", {"a.yaml": OK + "aliases: ['x;y']\n"}, "alias 'x;y' may contain only"),
    ("alias-twice", {"a.yaml": OK + "aliases: [b, b]\n"}, "an alias is listed twice"),
    ("alias-taken-by-other", {"a.yaml": OK + "aliases: [hpc]\n", "b.yaml": OK + "name: hpc\n"},
     "'hpc' is already taken by cluster"),
    ("name-twice", {"a.yaml": OK + "name: x\n", "b.yaml": OK + "name: x\n"},
     "name 'x' is already taken by cluster x"),
    ("env-key-injection", {"a.yaml": OK + "env: {'A=1; touch /tmp/pwn; B': x}\n"},
     "env key 'A=1; touch /tmp/pwn; B' is not a variable name"),
    ("env-key-digit", {"a.yaml": OK + "env: {'1A': x}\n"}, "env key '1A' is not a variable"),
    ("env-value-nul", {"a.yaml": OK + "env: {A: \"x\\0y\"}\n"}, "contains a NUL byte"),
    ("workdir-dotdot", {"a.yaml": "workdir: /scratch/../etc\n"}, "must not contain a '..'"),
    ("workdir-comma", {"a.yaml": "workdir: /scratch/a,/etc\n"}, "must not contain ','"),
    ("workdir-colon", {"a.yaml": "workdir: /scratch/a:/etc\n"}, "must not contain ':'"),
    ("image-cache-dotdot", {"a.yaml": OK + "container: {image_cache: /a/../b}\n"},
     "must not contain a '..'"),
    ("partition-injection", {"a.yaml": OK + "slurm: {partition: 'p;id'}\n"},
     "partition 'p;id' may contain only"),
]


@pytest.mark.parametrize(("files", "fragment"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
@pytest.mark.parametrize("command", ["validate", "render", "run"])
def test_bad_cluster_configs_are_refused_by_name(cli: Cli, files: dict[str, str], fragment: str,
                                                 command: str) -> None:
    for name, text in files.items():
        (cli.clusters / name).write_text(text, encoding="utf-8")
    res = cli(command, HELLO)
    assert res.returncode == 2, (res.stdout, res.stderr)
    no_traceback(res)
    assert fragment in res.stderr, res.stderr
    assert ".yaml" in res.stderr or "cluster" in res.stderr, res.stderr
    assert cli.workflows() == []


def test_a_file_named_local_replaces_the_built_in() -> None:
    mine = ClusterConfig(name="local", kind="process", max_running=3)
    assert Clusters([mine]).require("local").max_running == 3


def test_aliases_resolve_and_stay_unique() -> None:
    a = ClusterConfig(name="sdumont", aliases=("sd", "sdumont2"), workdir="/scratch/a")
    clusters = Clusters([a])
    assert clusters.require("sd") is a and clusters.require("sdumont2") is a
    with pytest.raises(ClusterConfigError, match="alias 'sd' is already taken by cluster sdumont"):
        Clusters([a, ClusterConfig(name="other", aliases=("sd",), workdir="/scratch/b")])

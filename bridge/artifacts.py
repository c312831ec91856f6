"""``akobridge artifacts``: a workflow's files on its cluster, listed and downloaded.

A workflow's roots are its volume targets, its (and its activities') ``mountPath`` and the job
directories of its attempts. Each cluster's roots are listed in one round trip; ``--get``
fetches a file or a directory under a root with one tar stream.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from bridge.runner import Bridge, SubmissionError
from bridge.store import Store
from runtimes.staging import FileInfo, download, list_argv, parse_listing
from runtimes.transport import Transport


class ArtifactError(ValueError):
    """Bad input: unknown workflow or cluster, or a path outside the workflow's files."""


@dataclass(frozen=True)
class Artifact:
    cluster: str
    path: str
    """Absolute path on the cluster."""
    info: FileInfo


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


class WorkflowFiles:
    """The files of workflow ``wf_id`` on the clusters it ran on."""

    def __init__(self, store: Store, bridge: Bridge, wf_id: int) -> None:
        wf = store.workflow(wf_id)
        if wf is None:
            raise ArtifactError(f"no workflow with id {wf_id}")
        self.bridge = bridge
        wanted: list[tuple[str, str | None]] = [(wf.runtime, v.target) for v in wf.spec.volumes]
        wanted.append((wf.runtime, wf.spec.mount_path))
        wanted += [(s.runtime or wf.runtime, s.mount_path) for s in wf.spec.steps]
        for act in store.activities(wf_id):
            wanted += [(a.cluster, a.jobdir) for a in store.attempts(act.id)]
        self.roots: dict[str, list[str]] = {}
        for cluster, path in wanted:
            if path:
                roots = self.roots.setdefault(cluster, [])
                norm = posixpath.normpath(path)
                if not any(_under(norm, r) for r in roots):
                    roots[:] = [r for r in roots if not _under(r, norm)] + [norm]
        self._transports: dict[str, Transport] = {}

    def transport(self, cluster: str) -> Transport:
        if cluster not in self._transports:
            try:
                rt = self.bridge.runtime(cluster)
            except SubmissionError as exc:
                raise ArtifactError(str(exc)) from None
            self._transports[cluster] = rt.transport  # LocalTransport for `local`
        return self._transports[cluster]

    def list(self) -> list[Artifact]:
        """Every regular file under the roots, sorted by cluster and path."""
        found: list[Artifact] = []
        for cluster, roots in sorted(self.roots.items()):
            results = self.transport(cluster).run_many([list_argv(r) for r in roots])
            for root, res in zip(roots, results, strict=True):
                if not res.ok:
                    raise OSError(f"cannot list {root} on {cluster}: {res.stderr.strip()}")
                found += [Artifact(cluster, posixpath.join(root, rel), info)
                          for rel, info in parse_listing(res.stdout).items()]
        return sorted(found, key=lambda a: (a.cluster, a.path))

    def get(self, path: str, to: Path) -> tuple[int, int]:
        """Download the file or directory ``path`` (absolute, or relative to a root) into
        ``to``: (files, bytes)."""
        if path.startswith("/"):
            norm = posixpath.normpath(path)
            candidates = [(c, norm) for c, roots in self.roots.items()
                          if any(_under(norm, r) for r in roots)]
        elif ".." in path.split("/"):
            candidates = []
        else:
            candidates = [(c, posixpath.normpath(posixpath.join(r, path)))
                          for c, roots in self.roots.items() for r in roots]
        if not candidates:
            raise ArtifactError(f"refusing {path}: not under the workflow's directories "
                                f"({', '.join(r for rs in self.roots.values() for r in rs)})")
        files = self.list()
        found = [(cluster, want, hits) for cluster, want in dict.fromkeys(candidates)
                 if (hits := [a for a in files if a.cluster == cluster and _under(a.path, want)])]
        if not found:
            raise ArtifactError(f"{path}: no such file or directory among the workflow's files")
        if len(found) > 1:
            raise ArtifactError(f"{path} is ambiguous: {', '.join(w for _, w, _ in found)}; "
                                "give the absolute path")
        cluster, want, hits = found[0]
        parent = posixpath.dirname(want)
        names = [posixpath.relpath(a.path, parent) for a in hits]
        return download(self.transport(cluster), parent, names, str(to))


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024 or unit == "GiB":
            break
    return f"{value:.1f} {unit}"


def table(files: list[Artifact], title: str) -> Table:
    t = Table(title=title, title_justify="left")
    t.add_column("path")
    t.add_column("size", justify="right")
    t.add_column("modified")
    for a in files:
        t.add_row(escape(a.path), _size(a.info.size),
                  datetime.fromtimestamp(a.info.mtime).strftime("%Y-%m-%d %H:%M:%S"))
    return t

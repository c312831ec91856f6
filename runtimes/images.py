"""Container images on a cluster: check ``.sif`` paths exist, pull ``docker://`` and
``library://`` images once into the cluster's image cache (compute nodes have no internet).
"""

from __future__ import annotations

import hashlib
import re
import shlex
from collections.abc import Iterable

from runtimes.config import ClusterConfig
from runtimes.transport import CommandTimedOut, Transport

URI_SCHEMES = ("docker://", "library://", "oras://", "shub://")
PULL_TIMEOUT_S = 3600.0
_SLUG_MAX = 80


def is_uri(image: str) -> bool:
    return image.startswith(URI_SCHEMES)


def cache_dir(cluster: ClusterConfig) -> str:
    """``container.image_cache``, else ``<workdir>/images`` (see ``ClusterConfig.resolved``)."""
    return cluster.container.image_cache or f"{cluster.workdir or '.'}/images"


def cache_name(image: str) -> str:
    """``<readable slug>-<12 hex of sha256(uri)>.sif``: distinct for distinct URIs, stable."""
    scheme, _, rest = image.partition("://")
    slug = re.sub(r"[^A-Za-z0-9.-]+", "_", rest).strip("_.-")[:_SLUG_MAX] or "image"
    digest = hashlib.sha256(image.encode("utf-8")).hexdigest()[:12]
    return f"{scheme}-{slug}-{digest}.sif"


def image_path(image: str, cluster: ClusterConfig) -> str:
    """Where the job finds ``image``: the path itself, or the pulled ``.sif`` in the cache."""
    if not is_uri(image):
        return image
    return f"{cache_dir(cluster)}/{cache_name(image)}"


def pull_script(image: str, cluster: ClusterConfig) -> str:
    """The shell lines pulling ``image``: the cluster's prologue first (``module load ...``),
    then ``<engine> pull`` into a temporary name renamed on success (no half image)."""
    path = image_path(image, cluster)
    part = f"{path}.part"
    lines = [cluster.prologue.rstrip("\n")] if cluster.prologue.strip() else []
    lines.append(
        f"mkdir -p -- {shlex.quote(cache_dir(cluster))} && rm -f -- {shlex.quote(part)} && "
        f"{cluster.container.engine} pull {shlex.quote(part)} {shlex.quote(image)} && "
        f"mv -f -- {shlex.quote(part)} {shlex.quote(path)}"
    )
    return "\n".join(lines) + "\n"


def prepare_images(transport: Transport, cluster: ClusterConfig,
                   images: Iterable[str], fresh: Iterable[str] = ()) -> list[str]:
    """Check every image (one batched command), pull the missing URIs — and the URIs in
    ``fresh`` even when cached (Peak ``clearImageCache``); the problems found.

    A pull that outlives :data:`PULL_TIMEOUT_S` is a problem (not retried every cycle); an
    unreachable cluster raises :class:`TransportError` (nothing is recorded, try later).
    """
    wanted = sorted(set(images))
    if cluster.container.engine == "none" or not wanted:
        return []
    paths = [image_path(i, cluster) for i in wanted]
    checks = transport.run_many([["test", "-f", p] for p in paths])
    problems: list[str] = []
    again = {i for i in fresh if is_uri(i)}
    for image, path, res in zip(wanted, paths, checks, strict=True):
        if res.ok and image not in again:
            continue
        if not is_uri(image):
            problems.append(f"image {path} does not exist on cluster {cluster.name}")
            continue
        where = f"cannot pull {image} into {path} on cluster {cluster.name}"
        try:
            pull = transport.run(["bash", "-c", pull_script(image, cluster)],
                                 timeout=PULL_TIMEOUT_S)
        except CommandTimedOut as exc:  # another TransportError: unreachable, try later
            problems.append(f"{where}: {exc}")
            continue
        if not pull.ok:
            detail = (pull.stderr or pull.stdout).strip().splitlines()[-1:] or ["no output"]
            hint = (" (does the cluster's prologue load the engine's module?)"
                    if pull.returncode == 127 else "")
            problems.append(f"{where}: {detail[0]}{hint}")
    return problems


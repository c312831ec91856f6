"""Container images on a cluster: check ``.sif`` paths exist, pull ``docker://`` and
``library://`` images once into the cluster's image cache (compute nodes have no internet).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable

from runtimes.config import ClusterConfig
from runtimes.transport import Transport

URI_SCHEMES = ("docker://", "library://", "oras://", "shub://")
PULL_TIMEOUT_S = 3600.0


def is_uri(image: str) -> bool:
    return image.startswith(URI_SCHEMES)


def cache_dir(cluster: ClusterConfig) -> str:
    """``container.image_cache``, else ``<workdir>/images`` (see ``ClusterConfig.resolved``)."""
    return cluster.container.image_cache or f"{cluster.workdir or '.'}/images"


def image_path(image: str, cluster: ClusterConfig) -> str:
    """Where the job finds ``image``: the path itself, or the pulled ``.sif`` in the cache."""
    if not is_uri(image):
        return image
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", image.split("://", 1)[1]).strip("_")
    return f"{cache_dir(cluster)}/{name}.sif"


def prepare_images(transport: Transport, cluster: ClusterConfig,
                   images: Iterable[str]) -> list[str]:
    """Check every image (one batched command), pull the missing URIs; the problems found."""
    wanted = sorted(set(images))
    if cluster.container.engine == "none" or not wanted:
        return []
    paths = [image_path(i, cluster) for i in wanted]
    checks = transport.run_many([["test", "-f", p] for p in paths])
    problems: list[str] = []
    for image, path, res in zip(wanted, paths, checks, strict=True):
        if res.ok:
            continue
        if not is_uri(image):
            problems.append(f"image {path} does not exist on cluster {cluster.name}")
            continue
        engine = cluster.container.engine
        pull = transport.run(
            ["bash", "-c", f"mkdir -p -- {shlex.quote(cache_dir(cluster))} && "
             f"{engine} pull {shlex.quote(path)} {shlex.quote(image)}"],
            timeout=PULL_TIMEOUT_S,
        )
        if not pull.ok:
            detail = (pull.stderr or pull.stdout).strip().splitlines()[-1:] or ["no output"]
            problems.append(f"cannot pull {image} into {path} on cluster {cluster.name}: "
                            f"{detail[0]}")
    return problems

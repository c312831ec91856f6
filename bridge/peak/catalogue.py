"""What the ids of a Peak-style body mean on this daemon: ``imageId``/``imageVersionId`` → an
image, ``resources.instanceTypeId`` → a job shape on a cluster, and the defaults.

Built from the daemon config's ``peak:`` section (:class:`bridge.daemon.config.PeakSettings`);
``GET /resources`` and ``GET /resources/defaults`` answer from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bridge.peak.problems import FieldError
from bridge.spec.quantities import parse_memory_mib, parse_storage_mib

if TYPE_CHECKING:
    from bridge.daemon.config import PeakSettings
    from bridge.peak.definition import Definition

DEFAULT_STORAGE = "10GB"


class CatalogueError(FieldError):
    """An id the catalogue does not know (or a catalogue that contradicts itself)."""


@dataclass(frozen=True)
class InstanceType:
    """One instance type: where and how large a step's job is."""

    id: int
    cluster: str
    cpus: int
    memory_mib: int
    gpus: int = 0
    gpu_memory_mib: int | None = None
    partition: str | None = None
    gres: str | None = None
    """Slurm ``--gres``; ``gpu:<gpus>`` when not configured and gpus > 0."""
    max_storage_mib: int | None = None
    """The most ``resources.storage`` (as ``--tmp`` MB) a step of this type may ask."""

    def storage_problem(self, storage: str) -> str | None:
        """Why a step of this type cannot ask ``storage`` (a valid size), or ``None``."""
        if self.max_storage_mib is None or parse_storage_mib(storage) <= self.max_storage_mib:
            return None
        return (f"{storage} is more temporary disk than instance type {self.id} offers (at "
                f"most {self.max_storage_mib // 1024}GB, peak.instance_types max_storage)")

    def resource(self) -> dict[str, Any]:
        """Its ``GET /resources`` entry (memory in GiB; no GPU: ``null``)."""
        return {"id": self.id, "cpu": self.cpus, "memory": _gib(self.memory_mib),
                "gpu": self.gpus or None,
                "gpuMemory": _gib(self.gpu_memory_mib) if self.gpu_memory_mib else None}


def _gib(mib: int) -> float | int:
    value = mib / 1024
    return int(value) if value.is_integer() else round(value, 3)


@dataclass(frozen=True)
class Catalogue:
    """Images by (id, version), instance types by id, and the defaults."""

    images: dict[tuple[int, int], str]
    instance_types: dict[int, InstanceType]
    default_type: int | None = None
    default_storage: str = DEFAULT_STORAGE

    @classmethod
    def from_config(cls, peak: PeakSettings, clusters: list[str] | None = None) -> Catalogue:
        """The catalogue of ``peak:``; :class:`CatalogueError` for an id listed twice, a
        default that is not an instance type (or whose storage exceeds its ``max_storage``),
        or (given ``clusters``) an unknown cluster."""
        images: dict[tuple[int, int], str] = {}
        where: dict[tuple[int, int], int] = {}
        for i, img in enumerate(peak.images):
            key = (img.id, img.version)
            if key in images:
                raise CatalogueError(f"peak.images[{i}]", f"image {img.id} version "
                                     f"{img.version} is also peak.images[{where[key]}]")
            images[key], where[key] = img.image, i
        types: dict[int, InstanceType] = {}
        for i, it in enumerate(peak.instance_types):
            if it.id in types:
                raise CatalogueError(f"peak.instance_types[{i}].id",
                                     f"instance type {it.id} is listed twice")
            if clusters is not None and it.cluster not in clusters:
                raise CatalogueError(f"peak.instance_types[{i}].cluster",
                                     f"no cluster named {it.cluster!r} (known: "
                                     f"{', '.join(clusters)})")
            types[it.id] = InstanceType(
                it.id, it.cluster, it.cpus, parse_memory_mib(it.memory), it.gpus,
                parse_memory_mib(it.gpu_memory) if it.gpu_memory else None, it.partition,
                it.gres or (f"gpu:{it.gpus}" if it.gpus else None),
                parse_storage_mib(it.max_storage) if it.max_storage else None)
        default = peak.defaults.instance_type if peak.defaults else next(iter(types), None)
        if peak.defaults and default not in types:
            raise CatalogueError("peak.defaults.instance_type",
                                 f"{default} is not one of peak.instance_types "
                                 f"({', '.join(map(str, types)) or 'none configured'})")
        storage = peak.defaults.storage if peak.defaults else DEFAULT_STORAGE
        shape = types.get(default) if default is not None else None
        problem = shape.storage_problem(storage) if shape else None
        if problem and peak.defaults:
            raise CatalogueError("peak.defaults.storage", problem)
        if problem and shape and shape.max_storage_mib:  # no defaults: what the type offers
            storage = f"{shape.max_storage_mib // 1024}GB"
        return cls(images, types, default, storage)

    def image(self, image_id: int, version_id: int | None = None) -> str:
        """The image of ``image_id`` at ``version_id`` (``None``: its highest version)."""
        versions = sorted(v for i, v in self.images if i == image_id)
        if not versions:
            known = ", ".join(str(i) for i in sorted({i for i, _ in self.images}))
            raise CatalogueError("imageId", f"no image {image_id} in the daemon's peak.images "
                                 f"(known: {known or 'none'})")
        if version_id is None:
            version_id = versions[-1]
        if version_id not in versions:
            raise CatalogueError("imageVersionId", f"image {image_id} has no version "
                                 f"{version_id} (known: {', '.join(map(str, versions))})")
        return self.images[(image_id, version_id)]

    def instance_type(self, type_id: int) -> InstanceType:
        """The instance type ``type_id``."""
        found = self.instance_types.get(type_id)
        if found is None:
            known = ", ".join(map(str, sorted(self.instance_types))) or "none"
            raise CatalogueError("instanceTypeId", f"no instance type {type_id} in the "
                                 f"daemon's peak.instance_types (known: {known})")
        return found

    def resources(self) -> list[dict[str, Any]]:
        """``GET /resources``: ``[{id, cpu, memory, gpu, gpuMemory}]`` by id."""
        return [self.instance_types[i].resource() for i in sorted(self.instance_types)]

    def defaults(self) -> dict[str, Any]:
        """``GET /resources/defaults``: ``{instanceTypeId, storage}``."""
        if self.default_type is None:
            raise CatalogueError("peak.instance_types", "the daemon has no instance types "
                                 "configured (peak.instance_types in its config)")
        return {"instanceTypeId": self.default_type, "storage": self.default_storage}

    def step_problems(self, defn: Definition) -> list[dict[str, str]]:
        """Each id of ``defn``'s steps the catalogue does not know, as ``{field, message}``
        with the step's path (``steps.train.imageVersionId``)."""
        problems: list[dict[str, str]] = []
        for name, step in defn.steps.items():
            try:
                self.image(step.image_id, step.image_version_id)
            except CatalogueError as exc:
                problems.append({"field": f"steps.{name}.{exc.field}", "message": exc.message})
            type_id = step.resources.instance_type_id if step.resources else None
            try:
                if type_id is not None:
                    self.instance_type(type_id)
            except CatalogueError as exc:
                problems.append({"field": f"steps.{name}.resources.{exc.field}",
                                 "message": exc.message})
                continue
            storage = step.resources.storage if step.resources else None
            shape = self.instance_types.get(type_id or self.default_type or 0)
            problem = shape.storage_problem(storage) if shape and storage else None
            if problem:
                problems.append({"field": f"steps.{name}.resources.storage",
                                 "message": problem})
        return problems


EMPTY = Catalogue({}, {})
"""A daemon without a ``peak:`` section."""

__all__ = ["EMPTY", "Catalogue", "CatalogueError", "InstanceType"]

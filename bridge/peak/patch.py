"""The describe reply's definition part, and patch: a partial body merged into a definition.

``describe_json`` gives ``parameters.env`` as a list of single-key objects and ``repository``
as an object or not at all: peak-sdk's ``patch_workflow`` describes, folds ``env`` back into a
map, merges and PUTs, and breaks on any other shape (reference/peak-api.md).

``apply_patch`` is that merge done here: top-level keys replace; ``steps.<name>`` is merged
into the existing step (nested objects merge, lists and ``env`` replace, ``null`` removes a
key); new steps are added; flags (the seed's ``patch_workflow`` arguments) win over the body,
the body over the existing definition.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bridge.peak.definition import Definition, parse_definition
from bridge.peak.problems import DefinitionError
from bridge.spec.errors import Problem

STEP_FLAGS: dict[str, tuple[str | None, str]] = {
    "repository": ("repository", "url"),
    "branch": ("repository", "branch"),
    "token": ("repository", "token"),
    "command": (None, "command"),
    "image_id": (None, "imageId"),
    "image_version_id": (None, "imageVersionId"),
    "instance_type_id": ("resources", "instanceTypeId"),
    "storage": ("resources", "storage"),
    "step_timeout": (None, "stepTimeout"),
    "clear_image_cache": (None, "clearImageCache"),
}
"""``patch_workflow`` argument → (the step's object that holds it, its JSON field)."""


def describe_json(defn: Definition, *, webhook_id: str | None = None) -> dict[str, Any]:
    """The definition fields of ``GET /workflows/{id}``: name, tags, triggers, watchers, steps
    (plus retryOptions and metadata when set). A webhook trigger shows ``webhook_id`` when the
    service has minted one."""
    body = defn.to_body()
    steps: dict[str, Any] = {}
    for name, step in body["steps"].items():
        step = {"type": "standard", **step}
        parameters = step.get("parameters")
        if parameters is not None and "env" in parameters:
            parameters["env"] = [{key: value} for key, value in parameters["env"].items()]
        steps[name] = step
    triggers = [{"cron": t["cron"]} if "cron" in t else {"webhook": webhook_id or True}
                for t in body.get("triggers", [])]
    reply = {"name": body["name"], "tags": body.get("tags", []), "triggers": triggers,
             "watchers": body.get("watchers", []), "steps": steps}
    reply.update({k: body[k] for k in ("retryOptions", "metadata") if k in body})
    return reply


def merge(old: object, new: object, path: tuple[str, ...] = ()) -> Any:
    """``new`` merged into ``old`` (both bodies, or parts at ``path``): objects merge and
    ``None`` removes a key, except that top-level keys other than ``steps``, lists and a
    step's ``parameters.env`` replace."""
    replaces = (len(path) == 1 and path[0] != "steps") or path[2:] == ("parameters", "env")
    if replaces or not (isinstance(old, dict) and isinstance(new, dict)):
        return new
    out = dict(old)
    for key, value in new.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge(out.get(key), value, (*path, str(key)))
    return out


def apply_patch(
    existing: Definition,
    patch: dict[str, Any],
    *,
    flags: Mapping[str, object] | None = None,
    step_names: Sequence[str] | None = None,
) -> Definition:
    """``existing`` changed by the partial body ``patch`` and then by ``flags`` (``name`` and
    the keys of :data:`STEP_FLAGS`; ``None`` values are not given), which change the steps in
    ``step_names`` (all steps when ``None``). The result is validated as a PUT body would be."""
    if not isinstance(patch, dict):
        raise DefinitionError([Problem("", "the patch must be a JSON object")])
    body = merge(existing.to_body(), patch)
    return parse_definition(_apply_flags(body, dict(flags or {}), step_names))


def _apply_flags(
    body: dict[str, Any], flags: dict[str, object], step_names: Sequence[str] | None
) -> dict[str, Any]:
    given = {k: v for k, v in flags.items() if v is not None}
    steps: dict[str, Any] = body["steps"] if isinstance(body.get("steps"), dict) else {}
    problems = [Problem(k, f"unknown patch flag {k!r} (known: name, {', '.join(STEP_FLAGS)})")
                for k in given if k != "name" and k not in STEP_FLAGS]
    problems += [Problem(f"stepNames[{i}]", f'unknown step "{n}"')
                 for i, n in enumerate(step_names or ()) if n not in steps]
    if problems:
        raise DefinitionError(problems)
    if "name" in given:
        body = {**body, "name": given.pop("name")}
    change: dict[str, Any] = {}
    for flag, value in given.items():
        holder, field = STEP_FLAGS[flag]
        if holder is None:
            change[field] = value
        else:
            change.setdefault(holder, {})[field] = value
    if change:
        body["steps"] = {name: merge(step, change, ("steps", name))
                         if step_names is None or name in step_names else step
                         for name, step in steps.items()}
    return body

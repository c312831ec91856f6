"""Checks that span several parts of a Peak-style body: the DAG over ``parents``, the steps
that conditions and inherited parameters name, and the triggers list.

They read the raw body and skip values of the wrong type (the models report those), so one
answer lists the shape problems and these together.
"""

from __future__ import annotations

from typing import Any

from bridge.peak.problems import suggest
from bridge.spec.akoflow import find_cycles
from bridge.spec.errors import Problem


def _items(value: object) -> list[tuple[int, Any]]:
    return list(enumerate(value)) if isinstance(value, list) else []


def _mapping(value: object) -> dict[Any, Any]:
    return value if isinstance(value, dict) else {}


def _unknown(name: str, names: set[str]) -> str:
    close = suggest(name, sorted(names))
    return f'unknown step "{name}"' + (f'; did you mean "{close}"?' if close else "")


def _ancestors(parents: dict[str, list[str]]) -> dict[str, set[str]]:
    """Every step's parents, their parents, and so on (cycles do not loop)."""
    found: dict[str, set[str]] = {}
    for start in parents:
        seen: set[str] = set()
        todo = list(parents[start])
        while todo:
            step = todo.pop()
            if step not in seen:
                seen.add(step)
                todo.extend(parents.get(step, ()))
        found[start] = seen
    return found


class _Links:
    def __init__(self, steps: dict[Any, Any]) -> None:
        self.steps = {str(k): _mapping(v) for k, v in steps.items()}
        self.names = set(self.steps)
        self.problems: list[Problem] = []
        self.parents = {name: self._parents(name) for name in self.steps}
        for cycle in find_cycles(self.parents):
            self.problems.append(Problem(
                f"steps.{cycle[0]}.parents",
                f"dependency cycle: {' -> '.join(cycle)} (each step has the next as a parent)"))
        self.ancestors = _ancestors(self.parents)
        self.outputs = {name: {str(k) for k in _mapping(step.get("outputParameters"))}
                        for name, step in self.steps.items()}

    def _parents(self, name: str) -> list[str]:
        valid: list[str] = []
        for j, parent in _items(self.steps[name].get("parents")):
            at = f"steps.{name}.parents[{j}]"
            if not isinstance(parent, str):
                continue
            if parent == name:
                self.problems.append(Problem(at, f'step "{name}" cannot be its own parent'))
            elif parent not in self.names:
                self.problems.append(Problem(at, _unknown(parent, self.names)))
            elif parent not in valid:
                valid.append(parent)
        return valid

    def upstream(self, name: str, other: object, at: str, why: str) -> bool:
        """Whether ``other`` is an ancestor of step ``name``; a problem at ``at`` if not."""
        if not isinstance(other, str):
            return False
        if other not in self.names:
            self.problems.append(Problem(at, _unknown(other, self.names)))
        elif other == name:
            self.problems.append(Problem(at, f'step "{name}" cannot depend on its own {why}'))
        elif other not in self.ancestors[name]:
            self.problems.append(Problem(at, f'step "{other}" is not a parent of "{name}" '
                                         f"(directly or through its parents), so its {why} is "
                                         f'not known when "{name}" starts; add it to parents'))
        else:
            return True
        return False

    def conditions(self, name: str) -> None:
        at = f"steps.{name}.executionParameters"
        execution = _mapping(self.steps[name].get("executionParameters"))
        for k, rule in _items(execution.get("conditional")):
            rule = _mapping(rule)
            here = f"{at}.conditional[{k}]"
            source, param = rule.get("stepName"), rule.get("paramName")
            if (self.upstream(name, source, f"{here}.stepName", "output")
                    and isinstance(param, str) and param not in self.outputs[str(source)]):
                declared = ", ".join(sorted(self.outputs[str(source)])) or "none"
                self.problems.append(Problem(f"{here}.paramName", f'step "{source}" has no '
                                             f"output parameter {param!r} (it has: {declared})"))
        for k, rule in _items(execution.get("parentStatus")):
            for j, parent in _items(_mapping(rule).get("parents")):
                self.upstream(name, parent, f"{at}.parentStatus[{k}].parents[{j}]", "status")

    def inherit(self, name: str) -> None:
        parameters = _mapping(self.steps[name].get("parameters"))
        for variable, param in _mapping(parameters.get("inherit")).items():
            if not isinstance(param, str):
                continue
            if any(param in self.outputs[a] for a in self.ancestors[name]):
                continue
            others = sorted(s for s in self.names - {name} if param in self.outputs[s])
            message = (f'output parameter {param!r} comes from "{others[0]}", which is not a '
                       f'parent of "{name}" (directly or through its parents)' if others else
                       f"no parent step (direct or indirect) has an output parameter {param!r}")
            self.problems.append(Problem(f"steps.{name}.parameters.inherit.{variable}", message))


def _trigger_problems(triggers: object) -> list[Problem]:
    """At most one cron schedule and one webhook (the pair the seed's listing shows)."""
    problems: list[Problem] = []
    first: dict[str, int] = {}
    for i, trigger in _items(triggers):
        kinds = [k for k in ("cron", "webhook") if k in _mapping(trigger)]
        if len(kinds) != 1:
            continue  # the model says what is wrong with it
        if kinds[0] in first:
            problems.append(Problem(f"triggers[{i}]", f"a second {kinds[0]} trigger (the first "
                                    f"is triggers[{first[kinds[0]]}]); a workflow has one"))
        first.setdefault(kinds[0], i)
    return problems


def link_problems(data: dict[Any, Any]) -> list[Problem]:
    """The problems between the parts of the body ``data`` (a JSON object)."""
    problems = _trigger_problems(data.get("triggers"))
    steps = data.get("steps")
    if not isinstance(steps, dict):
        return problems
    links = _Links(steps)
    for name in links.steps:
        links.conditions(name)
        links.inherit(name)
    return problems + links.problems

"""Problems found in a submitted workflow, the error that carries them, and their YAML lines.

:func:`load_yaml` and :func:`locate` serve every text format (JSON is YAML too): a problem's
field path and line come from the composed node tree, not from the constructed data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import yaml

Loc = tuple[str | int, ...]
"""A field location as pydantic reports it: ``("spec", "activities", 0, "cpuLimit")``."""
MAX_NODES = 100_000


@dataclass(frozen=True)
class Problem:
    """One error or warning: where (field path, 1-based YAML line) and what."""

    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = self.path
        if self.line is not None:
            where = f"{where} (line {self.line})" if where else f"line {self.line}"
        return f"{where}: {self.message}" if where else self.message


class SpecError(ValueError):
    """A workflow document that cannot be accepted; ``problems`` lists every reason."""

    def __init__(self, problems: Sequence[Problem], source: str = "<string>") -> None:
        self.problems: list[Problem] = list(problems)
        self.source = source
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)

    def __reduce__(self) -> tuple[type[SpecError], tuple[list[Problem], str]]:
        return (SpecError, (self.problems, self.source))


_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's parser when PyYAML was built with it (about 6× faster than the pure one)."""


class _Loader(_SafeLoader):  # type: ignore[valid-type,misc]
    """SafeLoader that keeps timestamps as strings (``name: 2024-01-01`` is a name)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def line_of(mark: yaml.Mark | None) -> int | None:
    """The 1-based line of a YAML mark."""
    return None if mark is None else mark.line + 1


def load_yaml(text: str) -> tuple[yaml.Node | None, object, list[Problem]]:
    """One document as (node tree, plain data, problems); data is None when there are problems.

    Syntax errors, duplicate keys, recursive aliases and alias bombs are problems. Merge keys
    are applied to the node tree as well, so :func:`locate` finds merged fields.
    """
    try:
        loader = _Loader(text)  # the reader refuses control characters right here
    except yaml.reader.ReaderError as exc:
        return None, None, [_unprintable(text, exc)]
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None, [Problem("", "the document is empty", 1)]
        problems = _check_nodes(node)
        if problems:
            return node, None, problems
        return node, loader.construct_document(node), []
    except yaml.MarkedYAMLError as exc:
        where = f" ({exc.context})" if exc.context else ""
        mark = exc.problem_mark or exc.context_mark
        return None, None, [Problem("", f"YAML syntax error: {exc.problem}{where}", line_of(mark))]
    except yaml.reader.ReaderError as exc:
        return None, None, [_unprintable(text, exc)]
    except yaml.YAMLError as exc:
        return None, None, [Problem("", f"YAML syntax error: {exc}")]
    except RecursionError:
        return None, None, [Problem("", "the document is nested too deeply")]
    finally:
        loader.dispose()


def _unprintable(text: str, exc: yaml.reader.ReaderError) -> Problem:
    """A character YAML does not allow (NUL, other control bytes, lone surrogates), with its
    line and column."""
    position = max(0, min(exc.position, len(text)))
    line = text.count("\n", 0, position) + 1
    column = position - (text.rfind("\n", 0, position) + 1) + 1
    code = exc.character if isinstance(exc.character, int) else ord(str(exc.character)[:1] or "?")
    return Problem("", f"column {column}: character U+{code:04X} is not allowed in YAML "
                       "(only printable characters, tabs and line breaks are)", line)


class _Reject(Exception):
    pass


def _check_nodes(root: yaml.Node) -> list[Problem]:
    """Duplicate keys; recursive or exponentially expanding aliases (counted once per node)."""
    problems: list[Problem] = []
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in active:
            raise _Reject("the document contains a recursive alias")
        active.add(id(node))
        total = 1
        if isinstance(node, yaml.MappingNode):
            first: dict[str, int | None] = {}
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value != "<<":
                    line = line_of(key.start_mark)
                    if key.value in first:
                        message = f"duplicate key {key.value!r} (first on line {first[key.value]})"
                        problems.append(Problem("", message, line))
                    first.setdefault(key.value, line)
                total += size(key) + size(value)
        elif isinstance(node, yaml.SequenceNode):
            total += sum(size(item) for item in node.value)
        active.discard(id(node))
        sizes[id(node)] = total
        if total > MAX_NODES:
            raise _Reject(f"the document is too large (more than {MAX_NODES} values)")
        return total

    try:
        size(root)
    except _Reject as exc:
        return [Problem("", str(exc), 1)]
    return problems


def locate(root: yaml.Node | None, loc: Loc) -> tuple[str, int | None]:
    """The display path (``spec.activities[0].cpuLimit``) and 1-based line of ``loc``.

    A mapping key gives the key's line; a missing key gives the line of the mapping that
    should hold it.
    """
    path = ""
    node = root
    line = line_of(root.start_mark) if root is not None else None
    for part in loc:
        if isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            path += f"[{part}]"
            node = node.value[part] if 0 <= part < len(node.value) else None
            line = line_of(node.start_mark) if node is not None else line
            continue
        path += f".{part}" if path else str(part)
        pairs = node.value if isinstance(node, yaml.MappingNode) else []
        found = [
            (k, v) for k, v in pairs if isinstance(k, yaml.ScalarNode) and k.value == str(part)
        ]
        node = found[-1][1] if found else None
        line = line_of(found[-1][0].start_mark) if found else line
    return path, line

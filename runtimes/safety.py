"""Character-level checks for user values that end up in generated shell scripts.

One set of checks for every input: the workflow intake (``bridge.spec``), the cluster configs
(``runtimes.config``) and the renderer (``runtimes.render``) call the same functions, so what
``validate`` accepts is what ``run`` renders. The renderer shell-quotes everything as well;
these checks keep names, paths and images plain enough that quoting mistakes cannot turn into
command injection.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_NAME_CHARS = re.compile(r"[A-Za-z0-9._-]")
_PATH_CHARS = re.compile(r"[A-Za-z0-9._/+@%=,:~-]")
_URI_CHARS = re.compile(r"[A-Za-z0-9._/:@+-]")
_LABEL_CHARS = re.compile(r"[A-Za-z0-9._:,+@%/|&*\[\]-]")
IMAGE_SCHEMES = ("docker", "library", "oras", "shub")
MAX_PATH = 4096

_CHAR_NAMES = {
    " ": "space", "\n": "newline", "\r": "carriage return", "\t": "tab", "\0": "NUL",
    "`": "backtick", "'": "single quote", '"': "double quote", "$": "dollar sign",
    ";": "semicolon", "\\": "backslash", "|": "pipe", "&": "ampersand",
}  # fmt: skip


def show(value: str, limit: int = 60) -> str:
    """``repr`` of a user value, shortened for messages."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def _bad_chars(value: str, allowed: re.Pattern[str]) -> str:
    """The distinct characters of ``value`` not matched by ``allowed``, described; '' if none."""
    bad = list(dict.fromkeys(c for c in value if not allowed.fullmatch(c)))
    described = [f"{c!r} ({_CHAR_NAMES[c]})" if c in _CHAR_NAMES else repr(c) for c in bad[:5]]
    if len(bad) > 5:
        described.append("...")
    return ", ".join(described)


def _require_str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, not {type(value).__name__}")
    if not value:
        raise ValueError(f"{what} is empty")
    return value


def check_name(value: str, what: str) -> str:
    """A name used in job names, file names and paths: ``[A-Za-z0-9][A-Za-z0-9._-]{0,62}``."""
    value = _require_str(value, what)
    bad = _bad_chars(value, _NAME_CHARS)
    if bad:
        raise ValueError(
            f"{what} {show(value)} may contain only letters, digits, '.', '_' and '-' (found {bad})"
        )
    if not value[0].isalnum():
        raise ValueError(f"{what} {show(value)} must start with a letter or digit")
    if not NAME_RE.fullmatch(value):
        raise ValueError(f"{what} is {len(value)} characters long (at most 63)")
    return value


def check_path(value: str, what: str) -> str:
    """An absolute POSIX path of plain characters with no ``..`` segment."""
    value = _require_str(value, what)
    bad = _bad_chars(value, _PATH_CHARS)
    if bad:
        raise ValueError(
            f"{what} {show(value)} contains {bad} "
            "(allowed: letters, digits and . _ / + @ % = , : ~ -)"
        )
    if not value.startswith("/"):
        raise ValueError(f"{what} {show(value)} must be an absolute path (starting with '/')")
    if ".." in value.split("/"):
        raise ValueError(f"{what} {show(value)} must not contain a '..' segment")
    if len(value) > MAX_PATH:
        raise ValueError(f"{what} is {len(value)} characters long (at most {MAX_PATH})")
    return value


def check_bind_path(value: str, what: str) -> str:
    """A path that becomes a container bind mount: :func:`check_path`, and no ``,`` or ``:``
    (``--bind`` splits at them: ``/data,/etc:/x`` would mount ``/etc``)."""
    value = check_path(value, what)
    for ch in ",:":
        if ch in value:
            raise ValueError(f"{what} {show(value)} must not contain {ch!r} (it is bound into"
                             " the container, and the engine splits bind lists at ',' and ':')")
    return value


def check_image(value: str, what: str = "image") -> str:
    """An image file path (see :func:`check_path`) or a docker/library/oras/shub URI."""
    value = _require_str(value, what)
    scheme, sep, rest = value.partition("://")
    if not sep:
        if not value.startswith("/") and not _bad_chars(value, _PATH_CHARS):
            raise ValueError(
                f"{what} {show(value)} must be an absolute path to an image file or a "
                "docker://, library://, oras:// or shub:// URI"
            )
        return check_path(value, what)
    if scheme not in IMAGE_SCHEMES:
        raise ValueError(
            f"{what} {show(value)} has an unsupported scheme {scheme!r} "
            "(use a path, or docker://, library://, oras:// or shub://)"
        )
    bad = _bad_chars(rest, _URI_CHARS)
    if bad:
        raise ValueError(
            f"{what} {show(value)} contains {bad} (allowed: letters, digits and . _ / : @ + -)"
        )
    if not rest or ".." in rest.split("/"):
        raise ValueError(f"{what} {show(value)} is not a valid {scheme}:// reference")
    return value


def check_label(value: str, what: str) -> str:
    """A ``nodeSelector`` value (partition, constraint, nodelist, gres, ...)."""
    value = _require_str(value, what)
    bad = _bad_chars(value, _LABEL_CHARS)
    if bad:
        raise ValueError(
            f"{what} {show(value)} contains {bad} "
            "(allowed: letters, digits and . _ : , + @ % / | & * [ ] -)"
        )
    return value


def check_env_name(value: str, what: str) -> str:
    """An environment variable name: ``[A-Za-z_][A-Za-z0-9_]*`` (at most 128 characters)."""
    value = _require_str(value, what)
    if not ENV_NAME_RE.fullmatch(value):
        raise ValueError(f"{what} {show(value)} is not a variable name (letters, digits and '_',"
                         " not starting with a digit, at most 128 characters)")
    return value


def check_webhook_url(value: str, what: str = "webhook url") -> str:
    """An ``http://`` or ``https://`` URL with a host and no whitespace or control characters."""
    value = _require_str(value, what)
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"{what} {show(value)} contains whitespace or control characters")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ValueError(f"{what} {show(value)} is not a valid URL ({exc})") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError(f"{what} {show(value)} must start with http:// or https://")
    if not parts.hostname:
        raise ValueError(f"{what} {show(value)} has no host")
    return value

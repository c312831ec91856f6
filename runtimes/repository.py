"""Code checked out for a job: ``git clone`` on the cluster's login node (through its
transport; compute nodes often have no internet) into the attempt's job directory, before
the job is submitted. A token travels on the command's stdin to a git credential helper, so
it is in no process's arguments, no script and no log.
"""

from __future__ import annotations

import shlex

from runtimes.transport import CommandTimedOut, Transport

REPO_DIR = "repo"
"""The checkout's directory inside the job directory (the command runs there)."""
CLONE_TIMEOUT_S = 600.0
_HELPER = ('!f() { test "$1" = get || return 0; echo username=x-access-token; '
           'echo "password=$AKB_GIT_TOKEN"; }; f')


def clone_url(url: str) -> str:
    """A Peak repository URL as git takes it (``github.com/org/repo`` → ``https://…``)."""
    return url if "://" in url or url.startswith("git@") else f"https://{url}"


def clone_script(url: str, branch: str | None, target: str) -> str:
    """The shell lines: read the token (maybe empty) from stdin, replace ``target`` by a
    shallow clone of ``branch`` (a full one where the server cannot serve shallow ones)."""
    def clone(*depth: str) -> str:
        words = ["git", "-c", f"credential.helper={_HELPER}", "clone", "--quiet", *depth]
        if branch:
            words += ["--branch", branch]
        words += ["--", clone_url(url), target]
        return " ".join(shlex.quote(w) for w in words)

    q_target = shlex.quote(target)
    return ("IFS= read -r AKB_GIT_TOKEN || true; export AKB_GIT_TOKEN GIT_TERMINAL_PROMPT=0\n"
            f"rm -rf -- {q_target} || exit 1\n"
            f"if ! out=$({clone('--depth', '1')} 2>&1); then\n"
            f'  case "$out" in\n'
            f"    *shallow*) rm -rf -- {q_target} && {clone()} ;;\n"
            f"    *) printf '%s\\n' \"$out\" >&2; exit 1 ;;\n"
            f"  esac\n"
            f"fi\n")


def check_out(transport: Transport, url: str, branch: str | None, jobdir: str,
              token: str | None = None) -> str | None:
    """Clone into ``<jobdir>/repo``; None, or why it failed (the token never in it)."""
    target = f"{jobdir}/{REPO_DIR}"
    try:
        res = transport.run(["bash", "-c", clone_script(url, branch, target)],
                            stdin=f"{token or ''}\n".encode(), timeout=CLONE_TIMEOUT_S)
    except CommandTimedOut as exc:
        return f"checking out {url}: {exc}"
    if res.ok:
        return None
    detail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
    message = detail[0].replace(token, "***") if token else detail[0]
    return f"checking out {url}{f' at {branch}' if branch else ''} failed: {message}"

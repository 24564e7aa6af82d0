"""Which code computed a result: records and defense sidecars carry `code_version()`.

Records and checkpoints are named by their configuration, not by the code that made them, so a
results directory can hold numbers from several versions of `atop_core` (a later commit adding
records beside an earlier run's). The report counts the versions it draws on; this says which.
"""

import functools
import hashlib
import subprocess
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
SHORT = 12  # hex digits shown for a sources digest
UNRECORDED = "unrecorded"  # results written before they named their code


@functools.cache
def code_version() -> dict[str, str | None]:
    """`sources`: the SHA-256 of every `atop_core/**/*.py` (paths and bytes; exact, whatever the
    checkout), and `git`: the checkout's commit, with `+changes` when atop_core/ differs from it,
    or None outside a git checkout (for looking the code up, not for identity). Read once per
    process: a kernel that reloads edited modules keeps the version it started with."""
    h = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*.py")):
        h.update(path.relative_to(PACKAGE).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return {"sources": h.hexdigest(), "git": git_commit()}


def git_commit() -> str | None:
    """The checkout's commit, with `+changes` when atop_core/ differs from it; None outside git."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(PACKAGE), *args], capture_output=True, text=True, timeout=10
        )
        if done.returncode:
            raise OSError(done.stderr)
        return done.stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        changed = git("status", "--porcelain", "--", ".")
    except (OSError, subprocess.SubprocessError):  # no git, or not a checkout
        return None
    return commit + ("+changes" if changed else "")


def short(version: dict | None) -> str:
    """`sources` digest prefix and commit, e.g. 'a1b2c3d4e5f6 (git 56f67a5)'; 'unrecorded'
    for results written before versions were recorded."""
    if not version:
        return UNRECORDED
    commit, plus, changes = (version.get("git") or "").partition("+")
    return version["sources"][:SHORT] + (f" (git {commit[:7]}{plus}{changes})" if commit else "")

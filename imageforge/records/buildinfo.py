"""Facts about this checkout and this build: git commit, build id, Packer variable values."""

from __future__ import annotations

import datetime as dt
import functools
import secrets
from pathlib import Path

from imageforge import __version__
from imageforge.errors import CommandError
from imageforge.process import runner


@functools.cache
def git_commit(root: Path) -> str:
    """The checkout's full commit, with '-dirty' when it has uncommitted changes."""
    try:
        commit = runner.output(["git", "-C", str(root), "rev-parse", "HEAD"]).strip()
        dirty = runner.output(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"]
        )
    except CommandError:
        return "unknown"
    return commit + ("-dirty" if dirty.strip() else "")


def new_build_id(root: Path, now: dt.datetime | None = None) -> str:
    """UTC timestamp, short commit and a random tag: sortable, never the same twice (even in
    one second), and valid in every cloud's names (lower-case letters, digits, hyphens)."""
    now = now or dt.datetime.now(dt.UTC)
    stem = f"{now:%Y%m%d-%H%M%S}-{git_commit(root)[:7]}"
    while True:  # 32 random bits; one process never hands out the same id twice
        build_id = f"{stem}-{secrets.token_hex(4)}"
        if build_id not in _ISSUED:
            _ISSUED.add(build_id)
            return build_id


# Every id this process made: 3 random bytes once collided in 500 ids of one second.
_ISSUED: set[str] = set()


def packer_vars(root: Path, build_id: str, template_hash: str) -> dict[str, str]:
    """Values of the build-metadata variables in packer/variables.pkr.hcl."""
    return {
        "build_id": build_id,
        "git_commit": git_commit(root),
        "template_hash": template_hash,
        "imageforge_version": __version__,
    }

"""The repository as a new user gets it, and the wheel they build from it (issue 11).

Shared by the package test and the example consumer, so both judge the same artefact: what a
fresh clone holds, built with the command the README gives.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from devtools.pulumi_cli import REPO


def fresh_tree(target: Path) -> Path:
    """What a fresh clone holds (tracked files, plus untracked ones not ignored) in `target`.

    Ignored files (venv/, stack state, caches) stay behind, so nothing a developer has locally can
    make the build or the example pass.
    """
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for name in filter(None, (entry.decode() for entry in listed)):
        if (REPO / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, target / name)
    return target


def build_wheel(tree: Path, out: Path) -> Path:
    """`pip wheel --no-deps .` in `tree`, as a user types it (pip fetches the build backend itself)."""
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-w", str(out), "."],
        cwd=tree,
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (path,) = out.glob("secure_webhooks-*.whl")
    return path

"""Install the stand-in pgjwt, pg_net and supabase_vault as real PostgreSQL extensions.

The files go into the server's ``$(pg_config --sharedir)/extension`` under the real extension
names, so ``CREATE EXTENSION pg_net WITH SCHEMA extensions`` works exactly as on Supabase.
A genuine installation of one of these extensions is never overwritten.
"""

from __future__ import annotations

import subprocess
from importlib import resources
from pathlib import Path

STAND_IN_MARKER = "LOCAL_SUPABASE STAND-IN"
_SOURCE_DIR = "extensions"


class ExtensionInstallError(RuntimeError):
    """The stand-in extension files could not be put in place."""


def extension_dir(pg_bindir: Path) -> Path:
    """Return the server's extension directory, as reported by its own pg_config."""
    sharedir = subprocess.run(
        [str(pg_bindir / "pg_config"), "--sharedir"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return Path(sharedir) / "extension"


def install_stand_in_extensions(pg_bindir: Path) -> None:
    """Copy every stand-in control/SQL file into the extension directory.

    Files already identical are left alone, so a non-root run works once root (e.g. CI setup)
    has installed them. Raises ExtensionInstallError when a target is a real, non-stand-in
    extension or when the directory is not writable.
    """
    target_dir = extension_dir(pg_bindir)
    sources = resources.files(__package__).joinpath(_SOURCE_DIR)
    for source in sorted(sources.iterdir(), key=lambda entry: entry.name):
        if not source.name.endswith((".control", ".sql")):
            continue
        content = source.read_bytes()
        target = target_dir / source.name
        if target.exists():
            existing = target.read_bytes()
            if existing == content:
                continue
            if STAND_IN_MARKER.encode() not in existing:
                raise ExtensionInstallError(
                    f"{target} belongs to a real installation of the extension; "
                    "refusing to replace it with the local_supabase stand-in"
                )
        try:
            with open(target, "wb") as handle:
                handle.write(content)
        except PermissionError as error:
            raise ExtensionInstallError(
                f"cannot write {target}: installing the stand-in extensions needs write access "
                f"to {target_dir} (run once as root, e.g. in CI setup)"
            ) from error
        # World-readable whatever the umask: the server runs as another OS user.
        target.chmod(0o644)

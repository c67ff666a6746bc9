"""Install the stand-in pgjwt, pg_net and supabase_vault as real PostgreSQL extensions.

The control and SQL files go into the server's ``$(pg_config --sharedir)/extension`` under the
real extension names, so ``CREATE EXTENSION pg_net WITH SCHEMA extensions`` works exactly as on
Supabase; the Vault's and pg_net's C libraries go into ``$(pg_config --pkglibdir)``. A genuine installation of
one of these extensions is never overwritten.
"""

from __future__ import annotations

import os
import tempfile
from importlib import resources
from pathlib import Path

from .c_libraries import LIBRARIES, LibraryBuildError, build, pg_config

STAND_IN_MARKER = "LOCAL_SUPABASE STAND-IN"
_SOURCE_DIR = "extensions"


class ExtensionInstallError(RuntimeError):
    """The stand-in extension files could not be put in place."""


def extension_dir(pg_bindir: Path) -> Path:
    return Path(pg_config(pg_bindir, "--sharedir")) / "extension"


def _install_file(target: Path, content: bytes, mode: int) -> None:
    """Put `content` at `target` unless it is already there; never replace a real extension's file.

    Files already identical are left alone, so a non-root run works once root (e.g. CI setup)
    has installed them. The new file is renamed into place, so a server that has the old
    library mapped keeps running on it.
    """
    if target.exists():
        existing = target.read_bytes()
        if existing == content:
            return
        if STAND_IN_MARKER.encode() not in existing:
            raise ExtensionInstallError(
                f"{target} belongs to a real installation of the extension; "
                "refusing to replace it with the local_supabase stand-in"
            )
    try:
        handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        with os.fdopen(handle, "wb") as file:
            file.write(content)
        # Readable (and for the library executable) by the server, which runs as another OS user.
        os.chmod(temporary, mode)
        os.replace(temporary, target)
    except PermissionError as error:
        raise ExtensionInstallError(
            f"cannot write {target}: installing the stand-in extensions needs write access "
            f"to {target.parent} (run scripts/setup.sh once as root)"
        ) from error


def install_stand_in_extensions(pg_bindir: Path) -> None:
    """Install every stand-in control/SQL file and C library (built if needed).

    Raises ExtensionInstallError when a target is a real, non-stand-in extension, when a
    directory is not writable, or when the library cannot be built.
    """
    target_dir = extension_dir(pg_bindir)
    sources = resources.files(__package__).joinpath(_SOURCE_DIR)
    for source in sorted(sources.iterdir(), key=lambda entry: entry.name):
        if source.name.endswith((".control", ".sql")):
            _install_file(target_dir / source.name, source.read_bytes(), 0o644)
    library_dir = Path(pg_config(pg_bindir, "--pkglibdir"))
    for library in LIBRARIES:
        try:
            built = build(pg_bindir, library)
        except LibraryBuildError as error:
            raise ExtensionInstallError(f"cannot build the stand-in {library.file_name}: {error}") from error
        _install_file(library_dir / library.file_name, built.read_bytes(), 0o755)

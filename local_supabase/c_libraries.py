"""Compile the stand-in's C libraries (`extensions/*.c`) for this server.

The Vault's crypto and pg_net's URL helpers are C in Supabase, so they are C here too (see
each source file for why). Only headers are needed to build them, so they come from Debian's
-dev packages unpacked into a cache (`apt-get download` + `dpkg-deb -x`, no root), pinned to
the installed runtime's version where the archive still has it: installing
postgresql-server-dev-15 would pull in clang and LLVM and upgrade the server. Headers already
installed system-wide are used as they are. Each library links the runtime by its soname and is
cached by a hash of everything that goes into it, so only the first cluster start compiles.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

CFLAGS = ("-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Werror", "-fPIC", "-shared")


class LibraryBuildError(RuntimeError):
    """A stand-in C library could not be compiled."""


@dataclass(frozen=True)
class Dependency:
    """A Debian library: the header that shows it is installed, its -dev package and its runtime."""

    header: str
    include_dir: str
    dev_package: str
    runtime_package: str
    #: What the library links against; None for PostgreSQL itself, which loads the library.
    soname: str | None = None


@dataclass(frozen=True)
class StandInLibrary:
    """`extensions/<name>.c`, installed as `$(pg_config --pkglibdir)/<name>.so`."""

    name: str
    dependency: Dependency

    @property
    def source(self) -> str:
        return f"{self.name}.c"

    @property
    def file_name(self) -> str:
        return f"{self.name}.so"


SODIUM = Dependency("sodium.h", "/usr/include", "libsodium-dev", "libsodium23", "libsodium.so.23")
CURL = Dependency("curl/curl.h", "/usr/include/x86_64-linux-gnu", "libcurl4-openssl-dev", "libcurl4", "libcurl.so.4")
LIBRARIES = (StandInLibrary("supabase_vault", SODIUM), StandInLibrary("pg_net", CURL))


def cache_dir() -> Path:
    """Shared with scripts/pulumi-toolchain.sh: ${SECURE_WEBHOOKS_CACHE:-$XDG_CACHE_HOME/secure-webhooks}."""
    if explicit := os.environ.get("SECURE_WEBHOOKS_CACHE"):
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "secure-webhooks"


def _run(command: list[str], what: str, cwd: Path | None = None) -> str:
    try:
        return subprocess.run(command, check=True, capture_output=True, text=True, cwd=cwd).stdout.strip()
    except FileNotFoundError as error:
        raise LibraryBuildError(f"{what}: {command[0]} is not installed (run scripts/setup.sh)") from error
    except subprocess.CalledProcessError as error:
        raise LibraryBuildError(f"{what} failed:\n$ {' '.join(command)}\n{error.stderr.strip()}") from None


def pg_config(pg_bindir: Path, option: str) -> str:
    """What the server's own pg_config reports for `option` (e.g. --pkglibdir)."""
    return _run([str(pg_bindir / "pg_config"), option], f"pg_config {option}")


def _installed_version(package: str) -> str:
    return _run(["dpkg-query", "--show", "--showformat=${Version}", package], f"looking up {package}")


def _download(package: str, version: str, work: Path) -> Path:
    """The .deb of `package` at `version`, or the archive's current one once that version is gone.

    When both fail, stale package lists are the usual cause: as root they are refreshed once.
    """

    def download(spec: str) -> None:
        _run(["apt-get", "download", spec], f"downloading {spec}", cwd=work)

    try:
        download(f"{package}={version}")
    except LibraryBuildError:
        try:
            download(package)
        except LibraryBuildError:
            if os.geteuid() != 0:
                raise
            _run(["apt-get", "update", "-q"], "apt-get update")
            download(package)
    (deb,) = work.glob("*.deb")
    return deb


def _unpacked_package(package: str, version: str) -> Path:
    """Root of `package` (for runtime `version`) unpacked into the cache, downloaded once."""
    root = cache_dir() / "debs" / f"{package}_{version}"
    if root.is_dir():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent) as work:
        deb = _download(package, version, Path(work))
        _run(["dpkg-deb", "--extract", str(deb), str(Path(work) / "root")], f"unpacking {deb.name}")
        # A rename, so a half-unpacked tree never looks complete to the next run.
        (Path(work) / "root").rename(root)
    return root


def _include_dir(dependency: Dependency) -> Path:
    system_dir = Path(dependency.include_dir)
    if (system_dir / dependency.header).is_file():
        return system_dir
    unpacked = _unpacked_package(dependency.dev_package, _installed_version(dependency.runtime_package))
    return unpacked / system_dir.relative_to("/")


def build(pg_bindir: Path, library: StandInLibrary) -> Path:
    """Return the path of `library` built for the server in `pg_bindir`, compiling it if needed."""
    pg_version = pg_config(pg_bindir, "--version")  # e.g. "PostgreSQL 15.18 (Debian 15.18-0+deb12u1)"
    major = pg_version.split()[1].split(".")[0]
    server = Dependency(
        "postgres.h",
        pg_config(pg_bindir, "--includedir-server"),
        f"postgresql-server-dev-{major}",
        f"postgresql-{major}",
    )
    includes = [_include_dir(server), _include_dir(library.dependency)]
    source = resources.files(__package__).joinpath("extensions", library.source).read_bytes()
    key = hashlib.sha256(repr((source, pg_version, [str(path) for path in includes], CFLAGS)).encode()).hexdigest()
    output = cache_dir() / "stand-in-libraries" / key[:16] / library.file_name
    if output.is_file():
        return output
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent) as work:
        source_file = Path(work) / library.source
        source_file.write_bytes(source)
        built = Path(work) / library.file_name
        compiler = shutil.which("cc") or "gcc"
        command = [compiler, *CFLAGS, *(f"-I{path}" for path in includes), "-o", str(built), str(source_file)]
        _run([*command, f"-l:{library.dependency.soname}"], f"compiling {library.source}")
        built.rename(output)
    return output

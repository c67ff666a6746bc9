"""The stand-in's C libraries build from scratch, the way a fresh machine builds them."""

from __future__ import annotations

from pathlib import Path

import pytest

from local_supabase import c_libraries
from local_supabase.cluster import DEFAULT_PG_BINDIR
from local_supabase.extensions import STAND_IN_MARKER


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SECURE_WEBHOOKS_CACHE", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("library", c_libraries.LIBRARIES, ids=lambda library: library.name)
def test_builds_into_an_empty_cache_then_reuses_it(empty_cache: Path, library: c_libraries.StandInLibrary) -> None:
    built = c_libraries.build(DEFAULT_PG_BINDIR, library)
    assert built.is_relative_to(empty_cache) and built.name == library.file_name
    assert STAND_IN_MARKER.encode() in built.read_bytes()
    modified = built.stat().st_mtime_ns
    assert c_libraries.build(DEFAULT_PG_BINDIR, library) == built
    assert built.stat().st_mtime_ns == modified


def test_a_failed_compile_names_the_source_and_shows_the_compiler_output(
    empty_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(c_libraries, "CFLAGS", (*c_libraries.CFLAGS, "-fno-such-flag"))
    (vault, _) = c_libraries.LIBRARIES
    with pytest.raises(c_libraries.LibraryBuildError, match=r"(?s)compiling supabase_vault\.c failed.*-fno-such-flag"):
        c_libraries.build(DEFAULT_PG_BINDIR, vault)
    assert not list(empty_cache.glob("stand-in-libraries/*/*.so"))

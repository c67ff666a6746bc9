"""Shows that each lint rule in tests/supabase_lints.py fires on a bad object and not on a good one.

Why: a lint that never fires would let our installed objects "pass" for
nothing. Every test runs inside a transaction that is always rolled back, so
the shared cluster from ``admin_conn`` is left unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from supabase_lints import (
    ANON_SECURITY_DEFINER_FUNCTION_EXECUTABLE,
    AUTHENTICATED_SECURITY_DEFINER_FUNCTION_EXECUTABLE,
    EXTENSION_IN_PUBLIC,
    FUNCTION_SEARCH_PATH_MUTABLE,
    lint,
)

ANON_RULE = ANON_SECURITY_DEFINER_FUNCTION_EXECUTABLE
AUTH_RULE = AUTHENTICATED_SECURITY_DEFINER_FUNCTION_EXECUTABLE
SCRATCH = "lint_scratch"


@pytest.fixture
def db(admin_conn: psycopg.Connection) -> Iterator[psycopg.Connection]:
    """Yield ``admin_conn`` inside a rolled-back transaction with the Supabase roles present."""
    with admin_conn.transaction(force_rollback=True):
        admin_conn.execute(
            "do $$ declare r text; begin"
            " foreach r in array array['anon', 'authenticated'] loop"
            "  if not exists (select from pg_roles where rolname = r) then"
            "   execute format('create role %I nologin', r);"
            "  end if;"
            " end loop; end $$"
        )
        admin_conn.execute(f"create schema {SCRATCH}")
        admin_conn.execute("create schema if not exists extensions")
        yield admin_conn


def fired(conn: psycopg.Connection, rule: str, obj: str, **kwargs: object) -> bool:
    """Report whether ``rule`` flags ``obj``. Other objects already in the database are ignored."""
    return any(f.rule == rule and f.object == obj for f in lint(conn, **kwargs))


def make_function(conn: psycopg.Connection, name: str, options: str = "") -> str:
    """Create a zero-argument SQL function in the scratch schema. Return its lint object name."""
    conn.execute(f"create function {SCRATCH}.{name}() returns int language sql {options} as $$ select 1 $$")
    return f"{SCRATCH}.{name}()"


def install_citext(conn: psycopg.Connection, schema: str) -> None:
    """Install citext, a contrib extension whose functions set no search_path, into ``schema``."""
    row = conn.execute("select installed_version from pg_available_extensions where name = 'citext'").fetchone()
    assert row == (None,), "citext (PostgreSQL contrib) must be available and not installed yet"
    conn.execute(f"create extension citext schema {schema}")


def test_search_path_rule_fires_without_search_path(db: psycopg.Connection) -> None:
    assert fired(db, FUNCTION_SEARCH_PATH_MUTABLE, make_function(db, "no_path"))


def test_search_path_rule_silent_with_pinned_search_path(
    db: psycopg.Connection,
) -> None:
    fn = make_function(db, "pinned", "set search_path = ''")
    assert not fired(db, FUNCTION_SEARCH_PATH_MUTABLE, fn)


def test_search_path_rule_ignores_extension_functions(db: psycopg.Connection) -> None:
    install_citext(db, SCRATCH)
    in_scratch = [f for f in lint(db) if f.object.startswith(f"{SCRATCH}.")]
    assert db.execute(f"select count(*) from pg_proc where pronamespace = '{SCRATCH}'::regnamespace").fetchone()[0]
    assert in_scratch == []


@pytest.mark.parametrize("rule", [ANON_RULE, AUTH_RULE])
def test_secdef_rules_fire_on_default_public_execute(db: psycopg.Connection, rule: str) -> None:
    fn = make_function(db, "definer", "security definer set search_path = ''")
    assert fired(db, rule, fn, exposed_schemas=[SCRATCH])


@pytest.mark.parametrize("rule", [ANON_RULE, AUTH_RULE])
def test_secdef_rules_silent_after_revoke(db: psycopg.Connection, rule: str) -> None:
    fn = make_function(db, "locked", "security definer set search_path = ''")
    db.execute(f"revoke execute on function {fn} from public, anon, authenticated")
    assert not fired(db, rule, fn, exposed_schemas=[SCRATCH])


@pytest.mark.parametrize("rule", [ANON_RULE, AUTH_RULE])
def test_secdef_rules_silent_for_security_invoker(db: psycopg.Connection, rule: str) -> None:
    fn = make_function(db, "invoker", "security invoker set search_path = ''")
    assert not fired(db, rule, fn, exposed_schemas=[SCRATCH])


def test_secdef_rules_tell_anon_from_authenticated(db: psycopg.Connection) -> None:
    fn = make_function(db, "members_only", "security definer set search_path = ''")
    db.execute(f"revoke execute on function {fn} from public, anon")
    db.execute(f"grant execute on function {fn} to authenticated")
    assert fired(db, AUTH_RULE, fn, exposed_schemas=[SCRATCH])
    assert not fired(db, ANON_RULE, fn, exposed_schemas=[SCRATCH])


def test_secdef_rules_only_look_at_exposed_schemas(db: psycopg.Connection) -> None:
    fn = make_function(db, "hidden", "security definer set search_path = ''")
    assert not fired(db, ANON_RULE, fn, exposed_schemas=["public"])
    db.execute(f"set local pgrst.db_schemas = 'public, {SCRATCH}'")
    assert fired(db, ANON_RULE, fn)


def test_extension_rule_fires_for_public(db: psycopg.Connection) -> None:
    install_citext(db, "public")
    assert fired(db, EXTENSION_IN_PUBLIC, "citext")


def test_extension_rule_silent_for_extensions_schema(db: psycopg.Connection) -> None:
    install_citext(db, "extensions")
    assert not fired(db, EXTENSION_IN_PUBLIC, "citext")

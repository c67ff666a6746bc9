"""Our own implementation of four Supabase database-linter (splinter) rules.

Why: the trigger function and triggers our dynamic providers install must pass
the Supabase advisor. Running the real splinter views needs the Supabase image;
re-stating the conditions here lets tests check any PostgreSQL 15 cluster.

The conditions were read from github.com/supabase/splinter at commit
55db5b1f28e58d816f7d9136eed87eabcd95868d (2026-04-27); the queries below are
written from those facts, not copied:

* ``function_search_path_mutable`` -- lints/0011_function_search_path_mutable.sql
  (last changed in 18b4bb9): every function outside ``EXCLUDED_SCHEMAS`` that is
  not owned by an extension (no ``pg_depend`` row with ``deptype = 'e'``) and
  whose ``proconfig`` has no entry starting with ``search_path=``. Any value
  counts as set, including ``search_path=""``. SECURITY INVOKER functions and
  trigger functions are included.
* ``anon_security_definer_function_executable`` -- lints/0028_...sql and
  ``authenticated_security_definer_function_executable`` -- lints/0029_...sql
  (both 55db5b1): ``prosecdef`` is true, and ``has_function_privilege(role, oid,
  'EXECUTE')`` is true. That check covers the default EXECUTE grant to PUBLIC
  and grants through role membership. The schema must also be in PostgREST's
  exposed schemas (the comma-separated ``pgrst.db_schemas`` setting, each name
  trimmed) and not in ``EXCLUDED_SCHEMAS``.
* ``extension_in_public`` -- lints/0014_extension_in_public.sql (95f050c): any
  extension except ``plpgsql`` whose ``extnamespace`` is the ``public`` schema.

Deliberate differences:

* Upstream reads ``pgrst.db_schemas`` and finds nothing when it is unset, as on
  a bare cluster. We fall back to ``DEFAULT_EXPOSED_SCHEMAS``, Supabase's
  default exposed API schemas, so rules 0028 and 0029 cannot pass just because
  the setting is missing. We treat a blank setting as unset. Callers can pass
  ``exposed_schemas`` explicitly.
* Rules 0028 and 0029 are skipped when their role does not exist. Upstream
  would raise an error instead.
* The extension-membership check also matches ``pg_depend.classid`` to
  ``pg_proc``. Upstream matches on ``objid`` only.
* Function objects include their identity arguments so that overloads can be
  told apart. Upstream's title, level, metadata and cache_key are left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import psycopg

FUNCTION_SEARCH_PATH_MUTABLE = "function_search_path_mutable"
ANON_SECURITY_DEFINER_FUNCTION_EXECUTABLE = "anon_security_definer_function_executable"
AUTHENTICATED_SECURITY_DEFINER_FUNCTION_EXECUTABLE = "authenticated_security_definer_function_executable"
EXTENSION_IN_PUBLIC = "extension_in_public"
RULES = (
    FUNCTION_SEARCH_PATH_MUTABLE,
    ANON_SECURITY_DEFINER_FUNCTION_EXECUTABLE,
    AUTHENTICATED_SECURITY_DEFINER_FUNCTION_EXECUTABLE,
    EXTENSION_IN_PUBLIC,
)

# Schemas that splinter rules 0011, 0028 and 0029 never report. They belong to
# Supabase or to extensions.
EXCLUDED_SCHEMAS = (
    "_timescaledb_cache", "_timescaledb_catalog", "_timescaledb_config",
    "_timescaledb_internal", "auth", "cron", "extensions", "graphql",
    "graphql_public", "information_schema", "net", "pgmq", "pgroonga",
    "pgsodium", "pgsodium_masks", "pgtle", "pgbouncer", "pg_catalog",
    "realtime", "repack", "storage", "supabase_functions",
    "supabase_migrations", "tiger", "topology", "vault",
)  # fmt: skip
DEFAULT_EXPOSED_SCHEMAS = ("public", "graphql_public")

_SECDEF_RULE_ROLES = {
    ANON_SECURITY_DEFINER_FUNCTION_EXECUTABLE: "anon",
    AUTHENTICATED_SECURITY_DEFINER_FUNCTION_EXECUTABLE: "authenticated",
}

_FUNCTIONS_WITHOUT_SEARCH_PATH = """
    select format('%%s.%%s(%%s)', ns.nspname, fn.proname,
                  pg_catalog.pg_get_function_identity_arguments(fn.oid))
    from pg_catalog.pg_proc as fn
    join pg_catalog.pg_namespace as ns on ns.oid = fn.pronamespace
    where ns.nspname <> all(%(excluded)s)
      and not exists (
          select from pg_catalog.pg_depend as dep
          where dep.classid = 'pg_catalog.pg_proc'::regclass
            and dep.objid = fn.oid
            and dep.deptype = 'e')
      and not exists (
          select from unnest(fn.proconfig) as setting
          where setting like 'search_path=%%')
    order by 1
"""

_SECDEF_EXECUTABLE_BY_ROLE = """
    select format('%%s.%%s(%%s)', ns.nspname, fn.proname,
                  pg_catalog.pg_get_function_identity_arguments(fn.oid))
    from pg_catalog.pg_proc as fn
    join pg_catalog.pg_namespace as ns on ns.oid = fn.pronamespace
    where fn.prosecdef
      and ns.nspname = any(%(exposed)s)
      and ns.nspname <> all(%(excluded)s)
      and pg_catalog.has_function_privilege(%(role)s, fn.oid, 'EXECUTE')
    order by 1
"""

_EXTENSIONS_IN_PUBLIC = """
    select ext.extname
    from pg_catalog.pg_extension as ext
    join pg_catalog.pg_namespace as ns on ns.oid = ext.extnamespace
    where ns.nspname = 'public' and ext.extname <> 'plpgsql'
    order by 1
"""


@dataclass(frozen=True)
class LintFinding:
    """One rule violation, shown in assertion messages and usable as a set member."""

    rule: str
    object: str
    detail: str


def lint(conn: psycopg.Connection, *, exposed_schemas: Sequence[str] | None = None) -> list[LintFinding]:
    """Run the four rules against the whole database behind ``conn``.

    ``exposed_schemas`` overrides PostgREST's exposed schemas for rules 0028
    and 0029. If it is ``None``, they come from ``pgrst.db_schemas``, and from
    ``DEFAULT_EXPOSED_SCHEMAS`` when that setting is unset.
    """
    exposed = list(exposed_schemas) if exposed_schemas is not None else _exposed(conn)
    excluded = list(EXCLUDED_SCHEMAS)
    findings = [
        LintFinding(FUNCTION_SEARCH_PATH_MUTABLE, fn, "search_path is not set on the function")
        for fn in _column(conn, _FUNCTIONS_WITHOUT_SEARCH_PATH, {"excluded": excluded})
    ]
    for rule, role in _SECDEF_RULE_ROLES.items():
        if not _column(conn, "select 1 from pg_catalog.pg_roles where rolname = %s", [role]):
            continue
        params = {"exposed": exposed, "excluded": excluded, "role": role}
        findings += [
            LintFinding(rule, fn, f"SECURITY DEFINER and EXECUTE is granted to {role}")
            for fn in _column(conn, _SECDEF_EXECUTABLE_BY_ROLE, params)
        ]
    findings += [
        LintFinding(EXTENSION_IN_PUBLIC, ext, "extension is installed in schema public")
        for ext in _column(conn, _EXTENSIONS_IN_PUBLIC)
    ]
    return findings


def _exposed(conn: psycopg.Connection) -> list[str]:
    """Read PostgREST's exposed schemas the way splinter does: split on commas and trim."""
    setting = _column(conn, "select current_setting('pgrst.db_schemas', true)")[0]
    if not setting or not setting.strip():
        return list(DEFAULT_EXPOSED_SCHEMAS)
    return [name.strip() for name in setting.split(",") if name.strip()]


def _column(conn: psycopg.Connection, query: str, params: object = None) -> list:
    """Return the first column of every row; it keeps the rule code short."""
    with conn.cursor() as cur:
        cur.execute(query, params)
        return [row[0] for row in cur.fetchall()]

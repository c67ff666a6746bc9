"""Fingerprints of live catalog objects, so drift detection compares whole definitions.

A hand-picked list of fields lets an out-of-band change through when it
touches a field nobody thought of. Instead every object is reduced to the
text PostgreSQL itself prints for it (columns with types, defaults and
constraints, index definitions, view and function definitions, ACLs,
persistence), and `read` compares that against what the provider saw right
after it installed the object.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import psycopg

_RELATION = """
SELECT c.relname,
       c.relkind::text || ' ' || c.relpersistence::text || ' ' || coalesce(c.relacl::text, '')
       || ' ' || coalesce(c.reloptions::text, '')
       || ' | ' || coalesce((
            SELECT pg_catalog.string_agg(
                     a.attname || ' ' || pg_catalog.format_type(a.atttypid, a.atttypmod)
                     || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
                     || coalesce(' default ' || pg_catalog.pg_get_expr(d.adbin, d.adrelid), '')
                     || CASE WHEN a.attidentity <> '' THEN ' identity ' || a.attidentity::text ELSE '' END,
                     ', ' ORDER BY a.attnum)
              FROM pg_catalog.pg_attribute a
              LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '')
       || ' | ' || coalesce((
            SELECT pg_catalog.string_agg(pg_catalog.pg_get_indexdef(i.indexrelid), '; ' ORDER BY 1)
              FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid), '')
       || ' | ' || coalesce((
            SELECT pg_catalog.string_agg(k.conname || ' ' || pg_catalog.pg_get_constraintdef(k.oid), '; ' ORDER BY 1)
              FROM pg_catalog.pg_constraint k WHERE k.conrelid = c.oid), '')
       || ' | ' || coalesce((
            SELECT pg_catalog.string_agg(t.tgname || ' ' || t.tgenabled::text, '; ' ORDER BY 1)
              FROM pg_catalog.pg_trigger t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal), '')
       || ' | ' || CASE WHEN c.relkind = 'v' THEN pg_catalog.pg_get_viewdef(c.oid) ELSE '' END
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = %(schema)s AND c.relname = ANY (%(names)s)
"""

_FUNCTION = """
SELECT p.proname || '(' || pg_catalog.pg_get_function_identity_arguments(p.oid) || ')',
       pg_catalog.pg_get_functiondef(p.oid) || ' ' || coalesce(p.proacl::text, 'default')
  FROM pg_catalog.pg_proc p
  JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = %(schema)s AND p.proname = ANY (%(names)s)
"""

_SCHEMA = """
SELECT n.nspname, coalesce(n.nspacl::text, '') || ' ' || pg_catalog.pg_get_userbyid(n.nspowner)
  FROM pg_catalog.pg_namespace n WHERE n.nspname = %(schema)s
"""


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fingerprint(
    cur: psycopg.Cursor, schema: str, *, relations: Iterable[str] = (), functions: Iterable[str] = ()
) -> dict[str, str]:
    """{object: digest of its full definition} for what exists; a missing object has no key."""
    found: dict[str, str] = {}
    cur.execute(_SCHEMA, {"schema": schema})
    for name, text in cur.fetchall():
        found[f"schema {name}"] = _digest(text)
    for query, names, kind in ((_RELATION, list(relations), "relation"), (_FUNCTION, list(functions), "function")):
        if names:
            cur.execute(query, {"schema": schema, "names": names})
            for name, text in cur.fetchall():
                found[f"{kind} {schema}.{name}"] = _digest(text)
    return dict(sorted(found.items()))


def drifted(seen: dict[str, str] | None, installed: dict[str, str] | None) -> list[str]:
    """Objects whose live definition differs from, or is missing against, what was installed."""
    seen, installed = seen or {}, installed or {}
    return sorted(name for name in set(seen) | set(installed) if seen.get(name) != installed.get(name))


_GRANTEES = """
SELECT DISTINCT r.rolname
  FROM (SELECT (pg_catalog.aclexplode(c.relacl)).grantee AS grantee, c.relowner AS owner
          FROM pg_catalog.pg_class c WHERE c.relnamespace = pg_catalog.to_regnamespace(%(schema)s)
        UNION ALL
        SELECT (pg_catalog.aclexplode(p.proacl)).grantee, p.proowner
          FROM pg_catalog.pg_proc p WHERE p.pronamespace = pg_catalog.to_regnamespace(%(schema)s)
        UNION ALL
        SELECT (pg_catalog.aclexplode(n.nspacl)).grantee, n.nspowner
          FROM pg_catalog.pg_namespace n WHERE n.nspname = %(schema)s) AS a
  JOIN pg_catalog.pg_roles r ON r.oid = a.grantee
 WHERE a.grantee <> a.owner AND r.rolname <> ALL (%(known)s)
 ORDER BY 1"""


def existing_roles(cur: psycopg.Cursor, roles: Iterable[str]) -> list[str]:
    """Those of `roles` this database has (a plain PostgreSQL has no Supabase API roles)."""
    cur.execute("SELECT rolname FROM pg_catalog.pg_roles WHERE rolname = ANY(%s) ORDER BY 1", (list(roles),))
    return [row[0] for row in cur.fetchall()]


def revoked_roles(cur: psycopg.Cursor, schema: str, api_roles: Iterable[str], granted: Iterable[str]) -> list[str]:
    """Whom `up` revokes everything in `schema` from, besides PUBLIC: the API roles this database has,
    and every role holding a privilege there that we never grant (neither the owner nor `granted`).

    Re-applying REVOKEs from PUBLIC and the API roles alone would leave an out-of-band GRANT to any
    other role in place, and the ACL drifted.
    """
    api_roles = list(api_roles)
    cur.execute(_GRANTEES, {"schema": schema, "known": [*api_roles, *granted]})
    foreign = [row[0] for row in cur.fetchall()]
    return existing_roles(cur, api_roles) + foreign

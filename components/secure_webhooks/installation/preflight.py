"""Checks that make `pulumi preview` fail clearly instead of `up` failing halfway.

They run in the Installation's `check` (components/secure_webhooks/installation/installation_provider.py),
which the engine calls during preview and before every create or update, and
which every other resource of the stack waits for; they only read the catalog.
"""

from __future__ import annotations

from typing import Any

import psycopg
from pulumi.dynamic import CheckFailure

from secure_webhooks.configuration.config_errors import STACK_CONFIG, KeyNames
from secure_webhooks.delivery.ordering import tables_without_primary_key

#: The schema Supabase installs extensions into; the function calls
#: extensions.sign / extensions.hmac by their qualified names.
EXTENSION_SCHEMA = "extensions"

#: Extensions each signer calls into (pg_net is needed by every signer).
SIGNER_EXTENSIONS = {"pgjwt": ("pgcrypto", "pgjwt"), "pgcrypto": ("pgcrypto",)}


def required_extensions(signer: str) -> tuple[str, ...]:
    return (*SIGNER_EXTENSIONS[signer], "pg_net")


def extension_problem(
    cur: psycopg.Cursor, extension: str, signer: str, managed: bool, names: KeyNames = STACK_CONFIG
) -> CheckFailure | None:
    """Why the function could not call `extension` in schema `extensions` after `up` (on the input
    the fix belongs to), or None."""
    cur.execute(
        """
        SELECT a.name IS NOT NULL, n.nspname
          FROM (SELECT %(ext)s AS ext) q
          LEFT JOIN pg_catalog.pg_available_extensions a ON a.name = q.ext
          LEFT JOIN pg_catalog.pg_extension e ON e.extname = q.ext
          LEFT JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
        """,
        {"ext": extension},
    )
    available, schema = cur.fetchone()
    if schema is None and not available:
        if extension == "pgjwt":
            return CheckFailure(
                "signer",
                f"{names.setting('signer')} is 'pgjwt' but this server cannot install the pgjwt extension "
                f"(Supabase does not offer it on Postgres 17); set {names.setting('signer')} to 'pgcrypto'",
            )
        return CheckFailure(
            "signer", f"extension {extension} is not available on this server (needed by signer {signer!r} and pg_net)"
        )
    if schema is None and not managed:
        return CheckFailure(
            "extensions_managed",
            f"extension {extension} is not installed and {names.setting('manageExtensions')} is false; "
            f"enable it in schema {EXTENSION_SCHEMA} (Supabase dashboard: Database > Extensions) or set it to true",
        )
    if schema is not None and schema != EXTENSION_SCHEMA and extension != "pg_net":
        return CheckFailure(
            "signer",
            f"extension {extension} is installed in schema {schema!r}, but the function calls it as "
            f"{EXTENSION_SCHEMA}.*; move it with ALTER EXTENSION {extension} SET SCHEMA {EXTENSION_SCHEMA}",
        )
    return None


#: Schemas of the system catalogs: no webhook can be installed on them.
SYSTEM_SCHEMAS = ("pg_catalog", "information_schema")
#: pg_class.relkind of what each kind of relation is called in a message.
RELKINDS = {"v": "a view", "m": "a materialized view", "f": "a foreign table", "S": "a sequence", "i": "an index"}


def target_problem(cur: psycopg.Cursor, schema: str, table: str) -> str | None:
    """Why no webhook trigger can be installed on `schema.table` by the connecting role, or None."""
    name = f"{schema}.{table}"
    if schema in SYSTEM_SCHEMAS or schema.startswith("pg_toast"):
        return f"{name} is a system catalog; webhooks can only watch your own tables"
    cur.execute(
        """
        SELECT c.relkind::text, pg_catalog.pg_get_userbyid(c.relowner),
               pg_catalog.pg_has_role(current_user, c.relowner, 'USAGE'), current_user
          FROM pg_catalog.pg_class c
          JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = %s AND c.relname = %s
        """,
        (schema, table),
    )
    row = cur.fetchone()
    if row is None:
        return f"table {name} does not exist"
    relkind, owner, owns, role = row
    if relkind not in ("r", "p"):
        return f"{name} is {RELKINDS.get(relkind, 'not a table')}; webhooks can only watch tables"
    if not owns:
        return (
            f"table {name} is owned by {owner}, not {role} (the role this stack connects as): "
            f"it cannot install or comment a trigger there; ALTER TABLE {name} OWNER TO {role}, or drop this webhook"
        )
    return None


def target_failures(cur: psycopg.Cursor, targets: list[dict[str, Any]]) -> list[CheckFailure]:
    """One failure per webhook whose table `up` could not hook, naming its config key.

    The Installation's check sees every webhook, and every other resource depends on it: a bad
    webhook fails the check before anything, a good webhook's trigger included, is created.
    """
    return [
        CheckFailure("webhook_tables", f"{target['key']}: {reason}")
        for target in targets
        if (reason := target_problem(cur, target["schema"], target["table"])) is not None
    ]


def preflight_props(
    *,
    signer: str,
    secret_name: str,
    secret_managed: bool,
    webhook_secret_name: str | None,
    webhook_secret_managed: bool,
    extensions_managed: bool,
    webhook_tables: list[dict[str, str]],
    key_names: KeyNames = STACK_CONFIG,
    ordered_webhooks: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """preflight_failures' inputs: the signer, the Vault secrets (and whether this stack manages them),
    whether extensions are installed by the stack, and every webhook's table with its config key."""
    return {
        "signer": signer,
        "secret_name": secret_name,
        "secret_managed": secret_managed,
        "webhook_secret_name": webhook_secret_name,
        "webhook_secret_managed": webhook_secret_managed,
        "extensions_managed": extensions_managed,
        "webhook_tables": webhook_tables,
        **key_names.prop,
        # Only with per-row order (each with its table, name and config key): otherwise nothing changes.
        **({"ordered_webhooks": ordered_webhooks} if ordered_webhooks else {}),
    }


#: Triggers on pg_net's tables: any role may create them (pg_net grants ALL, TRIGGER included, to
#: PUBLIC), and they would run as postgres whenever our function or reconciler queues a request.
_PG_NET_TRIGGERS = """
SELECT pg_catalog.quote_ident(t.tgname) || ' on ' || t.tgrelid::regclass::text
  FROM pg_catalog.pg_trigger AS t
 WHERE t.tgrelid IN (pg_catalog.to_regclass('net.http_request_queue'), pg_catalog.to_regclass('net._http_response'))
   AND NOT t.tgisinternal
 ORDER BY 1
"""


def pg_net_trigger_failures(cur: psycopg.Cursor) -> list[CheckFailure]:
    cur.execute(_PG_NET_TRIGGERS)
    return [
        CheckFailure(
            "signer",
            f"trigger {name} was created by someone else on pg_net's table (every role may): it would run as "
            "postgres whenever a webhook request is queued; the owner of pg_net's tables must drop it, or drop its "
            "function (the reconciler refuses to run while it exists)",
        )
        for (name,) in cur.fetchall()
    ]


def ordering_failures(cur: psycopg.Cursor, webhooks: list[dict[str, str]], names: KeyNames) -> list[CheckFailure]:
    """Per-row order keys a row by its primary key: a webhook on a table without one is refused."""
    keyless = tables_without_primary_key(cur, [(w["schema"], w["table"]) for w in webhooks])
    return [
        CheckFailure(
            "ordered_webhooks",
            f"{w['key']} (name {w['name']!r}): table {w['schema']}.{w['table']} has no primary key, and "
            f"{names.setting('delivery.ordering')} is 'per-row' (a row's events are ordered by its primary key); "
            "add a primary key to the table, or set delivery.ordering to 'none'",
        )
        for w in webhooks
        if (w["schema"], w["table"]) in keyless
    ]


def preflight_failures(cur: psycopg.Cursor, props: dict[str, Any]) -> list[CheckFailure]:
    names = KeyNames.of(props)
    managed = props.get("extensions_managed", True)
    failures = target_failures(cur, props.get("webhook_tables") or [])
    failures += ordering_failures(cur, props.get("ordered_webhooks") or [], names)
    failures += pg_net_trigger_failures(cur)
    failures += [
        failure
        for extension in required_extensions(props["signer"])
        if (failure := extension_problem(cur, extension, props["signer"], managed, names)) is not None
    ]
    cur.execute("SELECT pg_catalog.to_regclass('vault.secrets') IS NOT NULL")
    if not cur.fetchone()[0]:
        failures.append(CheckFailure("secret_name", "Supabase Vault is not installed (no table vault.secrets)"))
    else:
        wanted = [("secret_name", "secretName", "jwtSecret", props.get("secret_managed"))]
        if props.get("webhook_secret_name"):
            wanted.append(
                ("webhook_secret_name", "webhookSecretName", "webhookSecret", props.get("webhook_secret_managed"))
            )
        for prop, name_key, value_key, managed in wanted:
            cur.execute("SELECT EXISTS (SELECT FROM vault.secrets WHERE name = %s)", (props[prop],))
            if not managed and not cur.fetchone()[0]:
                failures.append(
                    CheckFailure(
                        prop,
                        f"Vault secret {props[prop]!r} ({names.setting(name_key)}) does not exist; "
                        f"create it in the Vault, or {names.set_hint(value_key)} for the stack to keep it there",
                    )
                )
    return failures

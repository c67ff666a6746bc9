"""Turn a fresh cluster into a Supabase look-alike and add the seed's demo objects.

The SQL lives in ``bootstrap.sql`` so it can be read next to the Supabase sources it mirrors;
this module applies it, sets login passwords, and optionally preinstalls extensions.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources

import psycopg
from psycopg import sql

# Login roles that get a password; the API roles (anon, authenticated, service_role) are NOLOGIN
# on Supabase and are reached with SET ROLE, as PostgREST does.
LOGIN_ROLES = ("supabase_admin", "postgres", "authenticator", "supabase_functions_admin")

# The seed's two static-header webhooks: (trigger name, table, path under the orchestrator URL).
# "injest" is misspelled in the seed and kept so tests see the real trigger name.
LEGACY_WEBHOOKS = (
    ("orchestrator-ingest-interns-individual", "resumes", "/ingest/interns/individual"),
    ("orchestrator-injest-resumes-batch", "zip_archives", "/ingest/resumes/batch"),
)
LEGACY_WEBHOOK_HEADERS = '{"Content-type":"application/json","x-webhook-secret":"static"}'

# pg_cron enabled as Supabase's docs do it (Database > Extensions, or these statements). The
# extension's objects live in schema `cron` whatever schema it is created "in".
PG_CRON_SETUP = (
    "CREATE EXTENSION pg_cron WITH SCHEMA pg_catalog",
    "GRANT USAGE ON SCHEMA cron TO postgres",
    "GRANT ALL PRIVILEGES ON ALL TABLES IN SCHEMA cron TO postgres",
)


def apply_bootstrap(
    admin_conn: psycopg.Connection,
    passwords: Mapping[str, str],
    *,
    preinstall_pgjwt: bool = True,
    preinstall_pg_net: bool = False,
    preinstall_pg_cron: bool = True,
) -> None:
    """Create Supabase's roles, schemas, grants, Vault and supabase_functions, then set passwords.

    pgjwt defaults to preinstalled because Supabase's Postgres 15 init scripts create it in
    ``extensions``; pg_net defaults to absent because the product installs it itself. pg_cron
    defaults to enabled: `postgres` cannot create it here (no supautils), and the delivery
    feature schedules its dispatcher with it.
    """
    script = resources.files(__package__).joinpath("bootstrap.sql").read_text(encoding="utf-8")
    with admin_conn.transaction():
        admin_conn.execute(script)
        for role, password in passwords.items():
            admin_conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))
        if preinstall_pgjwt:
            admin_conn.execute("CREATE EXTENSION pgjwt WITH SCHEMA extensions")
        if preinstall_pg_net:
            admin_conn.execute("CREATE EXTENSION pg_net WITH SCHEMA extensions")
        if preinstall_pg_cron:
            for statement in PG_CRON_SETUP:
                admin_conn.execute(statement)


def create_demo_tables(conn: psycopg.Connection) -> None:
    """Create the seed's ``public.resumes`` and ``public.zip_archives`` (run as ``postgres``).

    No explicit GRANTs: Supabase's default privileges already give anon/authenticated/service_role
    full access to tables that postgres creates in public, exactly what a fresh project does.
    """
    with conn.transaction():
        for table in ("resumes", "zip_archives"):
            conn.execute(
                sql.SQL(
                    """
                    CREATE TABLE IF NOT EXISTS public.{} (
                        id bigserial PRIMARY KEY,
                        name text NOT NULL,
                        storage_path text NOT NULL,
                        created_at timestamptz NOT NULL DEFAULT now()
                    )
                    """
                ).format(sql.Identifier(table))
            )


def install_legacy_webhooks(conn: psycopg.Connection, base_url: str) -> None:
    """Create the seed's static-header Database Webhooks pointing at ``base_url``.

    Trigger arguments must be literals (CREATE TRIGGER takes no bind parameters), so they are
    quoted with ``sql.Literal``. Existing triggers of the same name are replaced.
    """
    base = base_url.rstrip("/")
    with conn.transaction():
        for trigger, table, path in LEGACY_WEBHOOKS:
            conn.execute(
                sql.SQL(
                    """
                    CREATE OR REPLACE TRIGGER {trigger}
                    AFTER INSERT ON public.{table}
                    FOR EACH ROW EXECUTE FUNCTION supabase_functions.http_request(
                        {url}, 'POST', {headers}, '{{}}', '5000')
                    """
                ).format(
                    trigger=sql.Identifier(trigger),
                    table=sql.Identifier(table),
                    url=sql.Literal(base + path),
                    headers=sql.Literal(LEGACY_WEBHOOK_HEADERS),
                )
            )

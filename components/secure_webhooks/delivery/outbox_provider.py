"""Dynamic provider for the outbox schema: its tables, the deliveries view and the operator functions.

The schema carries the ownership marker in its COMMENT. An existing schema of
the same name that is not ours is refused, never adopted: it could hold
someone else's data. Destroy never silently discards an undelivered event: it
refuses while the outbox holds pending, failed or dead events, and says how
to deliver or discard them.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pulumi
from psycopg import sql
from pulumi.dynamic import CheckFailure, CheckResult

from secure_webhooks.delivery.endpoints import ENDPOINTS
from secure_webhooks.delivery.outbox import (
    ATTEMPTS,
    CLIENT_ROLES,
    EVENT_SEQUENCE,
    EVENTS,
    FUNCTIONS,
    OPERATOR_ROLES,
    PG_NET_EPOCH,
    SCHEMA,
    TABLES,
    install_statements,
    script_sha256,
)
from secure_webhooks.delivery.reconciler import JOB_NAME
from secure_webhooks.installation.installation_provider import instance_input, refuse_stale_instance
from secure_webhooks.installation.ownership import OwnershipError, marker, owner_of, refusal
from secure_webhooks.postgres.catalog import drifted, existing_roles, fingerprint, revoked_roles
from secure_webhooks.postgres.fingerprinted_provider import FingerprintedProvider
from secure_webhooks.postgres.table_locks import lock_all_at_once

OPERATOR_COMMAND = "python -m webhook_deliveries"
#: The tables a reconciler round writes, in whatever order it needs them: destroy takes them all at once first
#: (postgres/table_locks.py), so a round still running cannot deadlock with its DROP. (Not `up`: its triggers'
#: inserts would keep the events table locked on a busy database, and NOWAIT never gets a turn; its DDL waits
#: in line instead, under the provider's lock_timeout.)
ROUND_TABLES = (EVENTS, ATTEMPTS, PG_NET_EPOCH, ENDPOINTS)


def schema_comment(cur: psycopg.Cursor) -> tuple[bool, str | None]:
    """(exists, comment) of the outbox schema."""
    cur.execute(
        "SELECT pg_catalog.obj_description(n.oid, 'pg_namespace') FROM pg_catalog.pg_namespace n WHERE n.nspname = %s",
        (SCHEMA,),
    )
    row = cur.fetchone()
    return (row is not None, row[0] if row else None)


def undelivered(cur: psycopg.Cursor) -> dict[str, int]:
    """{status: count} of the events that have not been delivered (empty when there are none)."""
    cur.execute("SELECT pg_catalog.to_regclass(%s) IS NOT NULL", (f"{SCHEMA}.deliveries",))
    if not cur.fetchone()[0]:
        return {}
    cur.execute(
        sql.SQL(
            "SELECT status, count(*) FROM {}.deliveries WHERE status <> 'delivered' GROUP BY status ORDER BY status"
        ).format(sql.Identifier(SCHEMA))
    )
    return dict(cur.fetchall())


def describe_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{count} {status}" for status, count in counts.items())


def outbox_fingerprint(cur: psycopg.Cursor) -> dict[str, str]:
    return fingerprint(cur, SCHEMA, relations=(*TABLES, EVENT_SEQUENCE), functions=[name for name, _ in FUNCTIONS])


def _tables_only(seen: dict[str, str] | None) -> dict[str, str]:
    return {name: digest for name, digest in (seen or {}).items() if name.startswith("relation ")}


class OutboxProvider(FingerprintedProvider):
    inputs = ("owner", "script_sha256")

    def resource_id(self, props: dict[str, Any]) -> str:
        return SCHEMA

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        with self.db.transaction() as cur:
            exists, comment = schema_comment(cur)
        failures = []
        if exists and (reason := refusal("schema", SCHEMA, comment, news["owner"])):
            failures.append(CheckFailure("owner", reason))
        elif exists and owner_of(comment) is None:
            failures.append(CheckFailure("owner", _foreign_schema()))
        return CheckResult(news, failures)

    def install(self, cur: psycopg.Cursor, props: dict[str, Any], previous: dict[str, Any] | None) -> None:
        exists, comment = schema_comment(cur)
        if exists and owner_of(comment) is None:
            raise OwnershipError(_foreign_schema())
        if exists and (reason := refusal("schema", SCHEMA, comment, props["owner"])):
            raise OwnershipError(reason)
        if exists:
            refuse_stale_instance(cur, props, f"schema {SCHEMA}", comment)
        revoked = revoked_roles(cur, SCHEMA, CLIENT_ROLES, OPERATOR_ROLES)
        statements = install_statements(revoked, existing_roles(cur, OPERATOR_ROLES))
        try:
            for statement in statements:
                cur.execute(statement)
        except psycopg.DatabaseError as exc:
            if previous is None:
                raise
            raise RuntimeError(
                f"schema {SCHEMA} changed out of band in a way `pulumi up` cannot repair without touching "
                f"stored events ({str(exc).splitlines()[0]}); restore the definition by hand "
                "(see secure_webhooks/outbox.py)"
            ) from None
        comment_on = sql.SQL("COMMENT ON SCHEMA {} IS {}")
        cur.execute(
            comment_on.format(sql.Identifier(SCHEMA), sql.Literal(marker(props["owner"], props.get("instance"))))
        )
        if previous and previous.get("script_sha256") == props["script_sha256"]:
            # Same SQL as last time: what we just re-applied must give the tables we installed then.
            # IF NOT EXISTS cannot put back a dropped column, and a table holding events is never
            # dropped to rebuild it, so an unrepairable change is reported, not papered over.
            after = _tables_only(outbox_fingerprint(cur))
            broken = drifted(after, _tables_only(previous.get("installed")))
            if broken:
                raise RuntimeError(
                    f"{', '.join(broken)} changed out of band in a way `pulumi up` cannot repair without "
                    f"touching stored events; restore the definition by hand (see secure_webhooks/outbox.py)"
                )

    def fingerprint(self, cur: psycopg.Cursor, props: dict[str, Any]) -> dict[str, str] | None:
        exists, comment = schema_comment(cur)
        if not exists or owner_of(comment) != props["owner"]:
            return None
        return outbox_fingerprint(cur)

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        with self.db.transaction() as cur:
            exists, comment = schema_comment(cur)
            if not exists or owner_of(comment) != props["owner"]:
                return
            refuse_stale_instance(cur, props, f"schema {SCHEMA}", comment)
            lock_all_at_once(cur, SCHEMA, ROUND_TABLES)
            counts = undelivered(cur)
            if counts:
                raise RuntimeError(
                    f"refusing to drop schema {SCHEMA}: it holds undelivered webhook events "
                    f"({describe_counts(counts)}); destroying it would lose them. {_undelivered_advice(cur, counts)}"
                )
            cur.execute(sql.SQL("DROP VIEW IF EXISTS {}.deliveries").format(sql.Identifier(SCHEMA)))
            for name, arguments in FUNCTIONS:
                cur.execute(
                    sql.SQL("DROP FUNCTION IF EXISTS {}.{}({})").format(
                        sql.Identifier(SCHEMA), sql.Identifier(name), sql.SQL(arguments)
                    )
                )
            cur.execute(
                sql.SQL("DROP TABLE IF EXISTS {0}.attempts, {0}.events, {0}.pg_net_epoch, {0}.{1}").format(
                    sql.Identifier(SCHEMA), sql.Identifier(ENDPOINTS)
                )
            )
            cur.execute(
                sql.SQL("DROP SEQUENCE IF EXISTS {}.{}").format(sql.Identifier(SCHEMA), sql.Identifier(EVENT_SEQUENCE))
            )
            cur.execute(sql.SQL("DROP SCHEMA {}").format(sql.Identifier(SCHEMA)))
        pulumi.log.info(f"dropped schema {SCHEMA}: every event in it had been delivered")


def _undelivered_advice(cur: psycopg.Cursor, counts: dict[str, int]) -> str:
    """What gets the events out of the way: replaying only helps while the reconciler's pg_cron job runs."""
    statuses = ",".join(counts)
    # The command purges events not yet delivered only when told --yes.
    discard = f"`{OPERATOR_COMMAND} purge --status {statuses} --yes`"
    cur.execute("SELECT pg_catalog.to_regclass('cron.job') IS NOT NULL")
    job_runs = cur.fetchone()[0]
    if job_runs:
        cur.execute("SELECT EXISTS (SELECT FROM cron.job WHERE jobname = %s AND active)", (JOB_NAME,))
        job_runs = cur.fetchone()[0]
    if job_runs:
        return (
            f"Replay them (`{OPERATOR_COMMAND} replay`) and run destroy again once `{OPERATOR_COMMAND} status` "
            f"shows none undelivered, or discard them for good ({discard}) and run destroy again"
        )
    return (
        f"The reconciler's pg_cron job {JOB_NAME} is gone, so nothing sends them any more (a replay would leave "
        f"them pending forever). Discard them for good ({discard}) and run destroy again; or, to deliver them, run "
        f"`pulumi up` (it schedules the job again), `{OPERATOR_COMMAND} replay`, wait until "
        f"`{OPERATOR_COMMAND} status` shows none undelivered, then destroy"
    )


def _foreign_schema() -> str:
    return (
        f"schema {SCHEMA} already exists and is not managed by a secure-webhooks stack; it may hold "
        "someone else's data, so it is not taken over. Rename or drop it, or set secure-webhooks:delivery.mode "
        "to direct"
    )


class Outbox(pulumi.dynamic.Resource, module="secure-webhooks", name="Outbox"):
    """The durable outbox of at-least-once delivery, in its private schema."""

    installed: pulumi.Output[dict[str, str]]

    def __init__(
        self,
        name: str,
        owner: str,
        opts: pulumi.ResourceOptions | None = None,
        instance: pulumi.Input[str] | None = None,
    ) -> None:
        props = {
            "owner": owner,
            "instance": instance_input(instance, opts),
            "script_sha256": script_sha256(),
            "installed": None,
            "fingerprint": None,
        }
        super().__init__(OutboxProvider(), name, props, opts)

"""Dynamic provider for one webhook trigger (pulumi-postgresql has none).

Each trigger is replaced in a single transaction with CREATE OR REPLACE
TRIGGER, so no insert ever runs while the table has no webhook: concurrent
inserts wait for the swap and fire the new trigger. A trigger of the same
name that is not ours (the legacy static-header webhook) is recorded
verbatim in the database (adoption.py), swapped out in that same
transaction, and put back from that record on destroy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
import pulumi
from psycopg import sql
from pulumi.dynamic import (
    CheckFailure,
    CheckResult,
    ConfigureRequest,
    CreateResult,
    DiffResult,
    ReadResult,
    UpdateResult,
)

from secure_webhooks.installation import adoption
from secure_webhooks.installation.installation_provider import instance_input, refuse_stale_instance
from secure_webhooks.installation.ownership import claim, marker, owner_of, refusal
from secure_webhooks.postgres.database import DatabaseProvider
from secure_webhooks.signing.trigger_function import NEW_ROWS, OLD_ROWS, FunctionSpec

INPUTS = ("schema", "table", "name", "event", "url", "function_schema", "function_name", "owner")
RESTORE_ON_DESTROY = "secure-webhooks:restoreOnDestroy"
IDENTITY = ("schema", "table", "name")

#: The transition table each statement-level event reads (UPDATE fires per row: it needs OLD and NEW
#: paired, which transition tables cannot do). PostgreSQL allows transition tables on single-event
#: triggers only: one trigger per event.
TRANSITION_TABLES = {"INSERT": f"NEW TABLE AS {NEW_ROWS}", "DELETE": f"OLD TABLE AS {OLD_ROWS}", "UPDATE": None}
EVENTS = tuple(TRANSITION_TABLES)


@dataclass(frozen=True)
class Firing:
    """How the trigger for one event fires, and the arguments it passes to the function."""

    level: str
    transition_table: str | None
    arguments: tuple[str, ...]

    @property
    def referencing(self) -> str:
        return f"REFERENCING {self.transition_table} " if self.transition_table else ""


def firing(props: dict[str, Any], partitioned: bool) -> Firing:
    """INSERT and DELETE fire once per statement over a transition table (one Vault read and one
    signature per statement), except on a partitioned table.

    There a statement trigger fires only for statements naming the parent, so a write straight into a
    partition would send nothing, and partitions allow no transition tables. So every event fires per
    row, on a trigger PostgreSQL clones onto every partition, present and future. A row trigger runs
    on the partition holding the row, so the configured schema and table ride along as arguments and
    the payload names the table the webhook was configured on (trigger_function._payload).
    """
    if partitioned:
        return Firing("ROW", None, (props["url"], props["schema"], props["table"]))
    transition_table = TRANSITION_TABLES[props["event"]]
    return Firing("STATEMENT" if transition_table else "ROW", transition_table, (props["url"],))


# pg_trigger.tgtype bits (src/include/catalog/pg_trigger.h)
_ROW, _BEFORE, _INSTEAD = 1, 2, 64
_EVENT_BITS = {"INSERT": 4, "DELETE": 8, "UPDATE": 16, "TRUNCATE": 32}

#: tgenabled: O fires normally, A always, R only on replicas, D never.
_ENABLE = {"D": "DISABLE TRIGGER", "R": "ENABLE REPLICA TRIGGER", "A": "ENABLE ALWAYS TRIGGER", "O": "ENABLE TRIGGER"}


def trigger_props(
    *, schema: str, table: str, name: str, event: str, url: str, function: FunctionSpec, owner: str
) -> dict[str, Any]:
    """The provider's inputs: trigger `name` on `schema.table` posts each `event` row to `url`."""
    return {
        "schema": schema,
        "table": table,
        "name": name,
        "event": event,
        "url": url,
        "function_schema": function.schema,
        "function_name": function.name,
        "owner": owner,
    }


def desired_state(props: dict[str, Any], partitioned: bool) -> dict[str, Any]:
    """What `read` must observe when the trigger is exactly as configured on a table of that kind."""
    return {
        "url": props["url"],
        "events": [props["event"]],
        "level": firing(props, partitioned).level,
        "timing": "AFTER",
        "enabled": True,
        "function": f"{props['function_schema']}.{props['function_name']}",
        "managed_by": props["owner"],
        # The whole definition, so an out-of-band WHEN clause, another transition-table name or a
        # column list is drift too, not only the fields above.
        "definition_matches": True,
    }


#: pg_get_triggerdef of the trigger `install` creates from these props, rendered with PostgreSQL's
#: own quote_ident (and its literal quoting, which only doubles quotes) so it matches byte for byte.
_EXPECTED_DEFINITION = (
    "'CREATE TRIGGER ' || pg_catalog.quote_ident(%(name)s) || ' AFTER ' || %(event)s"
    " || ' ON ' || pg_catalog.quote_ident(%(schema)s) || '.' || pg_catalog.quote_ident(%(table)s) || ' '"
    " || %(referencing)s || 'FOR EACH ' || %(level)s || ' EXECUTE FUNCTION '"
    " || pg_catalog.quote_ident(%(function_schema)s) || '.' || pg_catalog.quote_ident(%(function_name)s)"
    " || '(' || (SELECT pg_catalog.string_agg(pg_catalog.quote_literal(a.arg), ', ' ORDER BY a.n)"
    "              FROM pg_catalog.unnest(%(arguments)s::text[]) WITH ORDINALITY AS a(arg, n)) || ')'"
)


def _definition_params(props: dict[str, Any], partitioned: bool) -> dict[str, Any]:
    fires = firing(props, partitioned)
    names = ("schema", "table", "name", "event", "function_schema", "function_name")
    return {
        **{key: props[key] for key in names},
        "level": fires.level,
        "referencing": fires.referencing,
        "arguments": list(fires.arguments),
    }


@dataclass(frozen=True)
class InstalledTrigger:
    oid: int
    comment: str | None
    state: dict[str, Any]


def _target(props: dict[str, Any]) -> tuple[sql.Identifier, sql.Composed]:
    return sql.Identifier(props["name"]), sql.SQL("{}.{}").format(
        sql.Identifier(props["schema"]), sql.Identifier(props["table"])
    )


def table_kind(cur: psycopg.Cursor, props: dict[str, Any]) -> str | None:
    """'table', 'partitioned' or None (no table of that name)."""
    cur.execute(
        """
        SELECT CASE c.relkind WHEN 'p' THEN 'partitioned' ELSE 'table' END
          FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')
        """,
        (props["schema"], props["table"]),
    )
    row = cur.fetchone()
    return row[0] if row else None


def table_exists(cur: psycopg.Cursor, props: dict[str, Any]) -> bool:
    return table_kind(cur, props) is not None


def find_trigger(cur: psycopg.Cursor, props: dict[str, Any]) -> InstalledTrigger | None:
    partitioned = table_kind(cur, props) == "partitioned"
    cur.execute(
        """
        SELECT t.oid, t.tgenabled, t.tgtype, t.tgnargs, t.tgargs,
               fn.nspname || '.' || f.proname, pg_catalog.obj_description(t.oid, 'pg_trigger'),
               pg_catalog.pg_get_triggerdef(t.oid) = (%(expected)s)
          FROM pg_catalog.pg_trigger t
          JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
          JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
          JOIN pg_catalog.pg_proc f ON f.oid = t.tgfoid
          JOIN pg_catalog.pg_namespace fn ON fn.oid = f.pronamespace
         WHERE n.nspname = %(schema)s AND c.relname = %(table)s AND t.tgname = %(name)s AND NOT t.tgisinternal
        """.replace("%(expected)s", _EXPECTED_DEFINITION),
        _definition_params(props, partitioned),
    )
    row = cur.fetchone()
    if row is None:
        return None
    oid, enabled_flag, tgtype, nargs, args, function, comment, definition_matches = row
    arguments = [arg.decode() for arg in bytes(args).split(b"\x00")[:nargs]]
    return InstalledTrigger(
        oid=oid,
        comment=comment,
        state={
            # Any other argument shows in definition_matches.
            "url": arguments[0] if arguments else None,
            "events": [event for event, bit in _EVENT_BITS.items() if tgtype & bit],
            "level": "ROW" if tgtype & _ROW else "STATEMENT",
            "timing": "INSTEAD OF" if tgtype & _INSTEAD else "BEFORE" if tgtype & _BEFORE else "AFTER",
            "enabled": enabled_flag in ("O", "A"),
            "function": function,
            "managed_by": owner_of(comment),
            "definition_matches": bool(definition_matches),
            "partitioned": partitioned,
        },
    )


def _set_enabled(cur: psycopg.Cursor, props: dict[str, Any], flag: str) -> None:
    name, table = _target(props)
    cur.execute(sql.SQL("ALTER TABLE {} {} {}").format(table, sql.SQL(_ENABLE[flag]), name))


def _comment(cur: psycopg.Cursor, props: dict[str, Any], comment: str | None) -> None:
    name, table = _target(props)
    cur.execute(sql.SQL("COMMENT ON TRIGGER {} ON {} IS {}").format(name, table, sql.Literal(comment)))


def install(cur: psycopg.Cursor, props: dict[str, Any]) -> InstalledTrigger:
    name, table = _target(props)
    fires = firing(props, table_kind(cur, props) == "partitioned")
    cur.execute(
        sql.SQL(
            "CREATE OR REPLACE TRIGGER {name} AFTER {event} ON {table} {referencing}"
            "FOR EACH {level} EXECUTE FUNCTION {function}({arguments})"
        ).format(
            name=name,
            event=sql.SQL(props["event"]),
            table=table,
            referencing=sql.SQL(fires.referencing),
            level=sql.SQL(fires.level),
            function=sql.SQL("{}.{}").format(
                sql.Identifier(props["function_schema"]), sql.Identifier(props["function_name"])
            ),
            arguments=sql.SQL(", ").join(map(sql.Literal, fires.arguments)),
        )
    )
    _set_enabled(cur, props, "O")
    _comment(cur, props, marker(props["owner"], props.get("instance")))
    installed = find_trigger(cur, props)
    assert installed is not None
    return installed


#: The adoption record of a legacy trigger, copied from the catalog inside the server.
_RECORD = """
SELECT pg_catalog.jsonb_build_object('definition', pg_catalog.pg_get_triggerdef(t.oid), 'enabled_flag', t.tgenabled,
                                     'comment', pg_catalog.obj_description(t.oid, 'pg_trigger'))
  FROM pg_catalog.pg_trigger t WHERE t.oid = %(oid)s"""


def adoption_key(props: dict[str, Any]) -> list[str]:
    """The trigger's name in the adoption store: a trigger is named within its table."""
    return [props["schema"], props["table"], props["name"]]


def restore(cur: psycopg.Cursor, props: dict[str, Any], adopted: dict[str, Any]) -> None:
    """Recreate the adopted trigger from its record: pg_get_triggerdef, firing state and comment.

    The definition runs from the store inside the server (it may hold a secret header);
    `adopted` is that record as read back, for the firing state and comment.
    """
    adoption.execute_definition(cur, adoption.TRIGGER, adoption_key(props))
    if adopted["enabled_flag"] != "O":
        _set_enabled(cur, props, adopted["enabled_flag"])
    if adopted.get("comment") is not None:
        _comment(cur, props, adopted["comment"])


def _name(props: dict[str, Any]) -> str:
    return f"{props['name']} on {props['schema']}.{props['table']}"


def _describe(props: dict[str, Any]) -> str:
    return f"trigger {_name(props)}"


class WebhookTriggerProvider(DatabaseProvider):
    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures: list[CheckFailure] = []
        if news.get("event") not in EVENTS:
            failures.append(CheckFailure("event", f"must be one of {sorted(EVENTS)}"))
            return CheckResult(news, failures)
        with self.db.transaction() as cur:
            if not table_exists(cur, news):
                failures.append(
                    CheckFailure(
                        "table",
                        f"table {news['schema']}.{news['table']} does not exist "
                        f"(secure-webhooks:webhooks entry {news['name']!r})",
                    )
                )
                return CheckResult(news, failures)
            installed = find_trigger(cur, news)
        if installed is not None and (reason := refusal("trigger", _name(news), installed.comment, news["owner"])):
            failures.append(CheckFailure("name", reason))
        return CheckResult(news, failures)

    def create(self, props: dict[str, Any]) -> CreateResult:
        key = adoption_key(props)
        with self.db.transaction(f"creating {_describe(props)}") as cur:
            existing = find_trigger(cur, props)
            adopting = existing is not None and claim("trigger", _name(props), existing.comment, props["owner"])
            adoption.lock(cur)
            # A re-create (after a refresh dropped our state, or a killed CLI) finds the record
            # of the first adoption and keeps it.
            adopted = adoption.recorded(cur, adoption.TRIGGER, key)
            earlier_record_kept = adopting and adopted is not None
            if adopting and adopted is None:
                adoption.record_from_catalog(cur, adoption.TRIGGER, key, props["owner"], _RECORD, {"oid": existing.oid})
                adopted = adoption.recorded(cur, adoption.TRIGGER, key)
            installed = install(cur, props)
        # Only now, the swap has committed:
        if earlier_record_kept:
            pulumi.log.warn(
                f"replaced {_describe(props)}, which was not ours; destroy restores the trigger adopted there "
                "first (its record is kept in the database), not this one"
            )
        elif adopting:
            pulumi.log.info(f"adopted existing {_describe(props)}; destroy will restore it")
        trigger_id = f"{props['schema']}.{props['table']}/{props['name']}"
        return CreateResult(trigger_id, {**props, **installed.state, "adopted": adopted})

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        with self.db.transaction(f"reading {_describe(props)}") as cur:
            installed = find_trigger(cur, props)
            if installed is None:
                adoption.lock(cur)
                owed = bool(props.get("adopted")) or adoption.recorded(cur, adoption.TRIGGER, adoption_key(props))
        if installed is None and owed:
            # Gone, but the trigger it replaced is still owed back: kept in the state as drift (`up`
            # re-creates it), so that a refresh followed by destroy still restores the legacy one.
            return ReadResult(id_, {**props, "managed_by": None, "definition_matches": False})
        if installed is None:
            return ReadResult(None, {})
        return ReadResult(id_, {**props, **installed.state})

    def diff(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = [key for key in INPUTS if olds.get(key) != news.get(key)]
        desired = desired_state(news, partitioned=olds.get("partitioned", False))
        changed += [key for key, value in desired.items() if olds.get(key) != value]
        replaces = [key for key in IDENTITY if olds.get(key) != news.get(key)]
        return DiffResult(changes=bool(changed), replaces=replaces, delete_before_replace=False)

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        with self.db.transaction(f"updating {_describe(news)}") as cur:
            existing = find_trigger(cur, news)
            if existing is not None:
                claim("trigger", _name(news), existing.comment, news["owner"])
            refuse_stale_instance(cur, news, _describe(news), existing.comment if existing else None)
            adoption.lock(cur)
            adopted = adoption.recorded_or_moved(
                cur, adoption.TRIGGER, adoption_key(news), news["owner"], olds.get("adopted")
            )
            installed = install(cur, news)
        return UpdateResult({**news, **installed.state, "adopted": adopted})

    def configure(self, req: ConfigureRequest) -> None:
        """`secure-webhooks:restoreOnDestroy: false` drops ours without giving an adopted trigger back.

        The way out when the legacy trigger cannot come back, e.g. its function is gone.
        """
        super().configure(req)
        self.restore_on_destroy = str(req.config.get(RESTORE_ON_DESTROY) or "true").lower() != "false"

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        """Drop ours, restore what the database records as adopted, and forget the record.

        State written by older code holds the only copy of its record: it moves into the database first.
        """
        restored = False
        skipped = False
        key = adoption_key(props)
        with self.db.transaction(f"deleting {_describe(props)}") as cur:
            existing = find_trigger(cur, props)
            if existing is not None and owner_of(existing.comment) != props["owner"]:
                pulumi.log.warn(f"{_describe(props)} is no longer ours; leaving it in place")
                return
            # Neither dropped nor a legacy trigger restored while another instance holds the installation.
            refuse_stale_instance(cur, props, _describe(props), existing.comment if existing else None)
            adoption.lock(cur)
            # A trigger goes with its table: without the table there is nothing to drop or give back.
            if not table_exists(cur, props):
                adoption.forget(cur, adoption.TRIGGER, key)
                return
            adopted = adoption.recorded_or_moved(cur, adoption.TRIGGER, key, props["owner"], props.get("adopted"))
            if existing is not None:
                name, table = _target(props)
                cur.execute(sql.SQL("DROP TRIGGER {} ON {}").format(name, table))
            if adopted and not self.restore_on_destroy:
                skipped = True
            elif adopted:
                try:
                    restore(cur, props, adopted)
                except (psycopg.errors.UndefinedFunction, psycopg.errors.InvalidSchemaName) as exc:
                    # Raised inside the transaction: our trigger is not dropped either.
                    raise RuntimeError(
                        f"cannot restore the adopted {_describe(props)}: {str(exc).splitlines()[0]}. Nothing was "
                        "changed. Recreate that function and run destroy again, or drop ours without restoring "
                        f"the legacy trigger: `pulumi config set {RESTORE_ON_DESTROY} false`, then destroy"
                    ) from None
                restored = True
            adoption.forget(cur, adoption.TRIGGER, key)
        if restored:
            pulumi.log.info(f"restored the adopted {_describe(props)}")
        if skipped:
            pulumi.log.warn(
                f"dropped {_describe(props)} without restoring the trigger it replaced ({RESTORE_ON_DESTROY})"
            )


class WebhookTrigger(pulumi.dynamic.Resource, module="secure-webhooks", name="WebhookTrigger"):
    """One AFTER trigger that sends each affected row of a table to a URL."""

    url: pulumi.Output[str]
    enabled: pulumi.Output[bool]

    def __init__(
        self,
        name: str,
        *,
        schema: str,
        table: str,
        trigger_name: str,
        event: str,
        url: str,
        function: FunctionSpec,
        owner: str,
        opts: pulumi.ResourceOptions | None = None,
        instance: pulumi.Input[str] | None = None,
    ) -> None:
        props = {
            **trigger_props(
                schema=schema, table=table, name=trigger_name, event=event, url=url, function=function, owner=owner
            ),
            "instance": instance_input(instance, opts),
            "enabled": None,
        }
        # The adopted legacy definition may carry a static secret header: keep it a Pulumi secret.
        opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=["adopted"]))
        super().__init__(WebhookTriggerProvider(), name, props, opts)

"""Dynamic provider for the pg_cron job that runs the reconciler.

The job is named, so `cron.schedule` both creates and reschedules it, and
`read` compares its live schedule, command, role and active flag with what we
render, and where pg_cron connects to run it (username, database, nodename,
nodeport) with what `cron.schedule` gives a new job: a job dropped, paused,
rescheduled or pointed at another port out of band is drift. Its
command starts with our ownership marker (cron.job has no comments).

Removing the job stops every retry, so delete refuses while any event is
undelivered (pending, failed, or dead: a dead event replayed after the job is
gone would wait forever); the job keeps delivering, and destroy succeeds once
the events are delivered (dead ones replayed first) or deliberately purged.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import psycopg
import pulumi
from pulumi.dynamic import CheckFailure, CheckResult, CreateResult, DiffResult, ReadResult, UpdateResult

from secure_webhooks.configuration.config_errors import STACK_CONFIG, KeyNames
from secure_webhooks.configuration.delivery_settings import AUTO_SCHEDULE
from secure_webhooks.delivery.outbox_provider import OPERATOR_COMMAND, describe_counts, undelivered
from secure_webhooks.delivery.reconciler import JOB_NAME, cron_command
from secure_webhooks.installation.installation_provider import instance_input, refuse_stale_instance
from secure_webhooks.installation.ownership import OwnershipError, marker, owner_of
from secure_webhooks.postgres.database import DatabaseProvider

INPUTS = ("owner", "schedule", "job_name")
MINUTE_SCHEDULE = "* * * * *"
SECOND_SCHEDULE = "1 seconds"


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:2])


def pg_cron_version(cur: psycopg.Cursor) -> str | None:
    cur.execute("SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'pg_cron'")
    row = cur.fetchone()
    return row[0] if row else None


def supports_seconds(version: str) -> bool:
    """pg_cron accepts 'N seconds' schedules from 1.5 on."""
    return _version(version) >= (1, 5)


def resolve_schedule(schedule: str, version: str) -> str:
    if schedule == AUTO_SCHEDULE:
        return SECOND_SCHEDULE if supports_seconds(version) else MINUTE_SCHEDULE
    return schedule


def job_command(owner: str, schedule: str, instance: str | None = None) -> str:
    """The job's command: our marker (written by `instance`, when known) on its first line, then the loop."""
    return f"-- {marker(owner, instance)}\n{cron_command(schedule)}"


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def find_job(cur: psycopg.Cursor, job_name: str) -> dict[str, Any] | None:
    cur.execute(
        "SELECT jobid, schedule, command, active, username, database, nodename, nodeport"
        " FROM cron.job WHERE jobname = %s ORDER BY jobid LIMIT 1",
        (job_name,),
    )
    row = cur.fetchone()
    if row is None:
        return None
    jobid, schedule, command, active, username, database, nodename, nodeport = row
    first_line = _first_line(command)
    return {
        "jobid": jobid,
        "live_schedule": schedule,
        "command_sha256": _sha256(command),
        "active": active,
        "username": username,
        "managed_by": owner_of(first_line),
        # Where pg_cron connects to run the job: a wrong port, host or database stops every delivery.
        "connection": _connection(username, database, nodename, nodeport),
    }


def _connection(username: str | None, database: str | None, nodename: str | None, nodeport: Any) -> dict[str, Any]:
    return {
        "username": username,
        "database": database,
        "nodename": nodename,
        "nodeport": None if nodeport is None else int(nodeport),
    }


#: A job name no one else uses, for `scheduled_connection`'s probe (rolled back at once).
_PROBE = "secure_webhooks_connection_probe"


def scheduled_connection(cur: psycopg.Cursor) -> dict[str, Any]:
    """Where `cron.schedule` makes a new job of this role connect (username, database, nodename, nodeport).

    pg_cron fills these in from the session and its own settings (cron.host, the server's port) when it
    inserts a job, and `cron.schedule` of an existing job keeps the old ones. So the expected values are
    read from a probe job scheduled and rolled back in a savepoint, not guessed: on Supabase and here
    `cron.host` differ (localhost, 127.0.0.1).
    """
    with cur.connection.transaction() as savepoint:
        cur.execute("SELECT cron.schedule(%s, '0 0 1 1 *', 'SELECT 1')", (_PROBE,))
        cur.execute(
            "SELECT username, database, nodename, nodeport FROM cron.job WHERE jobname = %s ORDER BY jobid DESC"
            " LIMIT 1",
            (_PROBE,),
        )
        connection = _connection(*cur.fetchone())
        raise psycopg.Rollback(savepoint)
    return connection


def connection_drift(live: dict[str, Any] | None, expected: dict[str, Any] | None) -> list[str]:
    """The connection fields of the job that differ from what pg_cron gives a job scheduled now."""
    if not live or not expected:  # state written before the connection was compared
        return []
    return [
        f"connection.{key}"
        for key in ("username", "database", "nodename", "nodeport")
        if _normal(live.get(key)) != _normal(expected.get(key))
    ]


def _normal(value: Any) -> Any:
    """Pulumi state hands numbers back as floats."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _first_line(command: str) -> str:
    return command.split("\n", 1)[0]


def job_marker(cur: psycopg.Cursor, job_name: str) -> str | None:
    """The first line of the job's command, which holds our marker (cron.job has no comments)."""
    cur.execute("SELECT command FROM cron.job WHERE jobname = %s ORDER BY jobid LIMIT 1", (job_name,))
    row = cur.fetchone()
    return _first_line(row[0]) if row else None


def desired_state(props: dict[str, Any], instance: str | None = None) -> dict[str, Any]:
    """What `read` must observe; `instance` is the one that wrote the command (None in older state)."""
    return {
        "live_schedule": props["resolved_schedule"],
        "command_sha256": _sha256(job_command(props["owner"], props["resolved_schedule"], instance)),
        "active": True,
        "managed_by": props["owner"],
    }


class ScheduleProvider(DatabaseProvider):
    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures: list[CheckFailure] = []
        with self.db.transaction() as cur:
            version = pg_cron_version(cur)
            if version is None:
                failures.append(
                    CheckFailure(
                        "schedule",
                        f"{KeyNames.of(news).setting('delivery.mode')} is 'at-least-once', which needs pg_cron to "
                        "run the reconciler: enable it (Supabase dashboard: Database > Extensions > pg_cron, or "
                        "`create extension pg_cron with schema pg_catalog`) or set the mode to 'direct'",
                    )
                )
                return CheckResult(news, failures)
            cur.execute("SELECT current_database(), current_setting('cron.database_name', true)")
            database, cron_database = cur.fetchone()
            if cron_database and cron_database != database:
                failures.append(
                    CheckFailure(
                        "schedule",
                        f"pg_cron runs jobs in database {cron_database!r} (cron.database_name), not {database!r}",
                    )
                )
            job = find_job(cur, news["job_name"])
        if news["schedule"].endswith(" seconds") and not supports_seconds(version):
            failures.append(
                CheckFailure(
                    "schedule",
                    f"{KeyNames.of(news).setting('delivery.schedule')} {news['schedule']!r} needs pg_cron >= 1.5; "
                    f"this server has {version}, which schedules by the minute: use 'auto' or a cron expression",
                )
            )
        if job is not None and job["managed_by"] not in (None, news["owner"]):
            failures.append(
                CheckFailure(
                    "job_name",
                    f"pg_cron job {news['job_name']} is managed by Pulumi stack {job['managed_by']}, "
                    f"not {news['owner']}",
                )
            )
        return CheckResult({**news, "resolved_schedule": resolve_schedule(news["schedule"], version)}, failures)

    def _schedule(self, props: dict[str, Any]) -> dict[str, Any]:
        with self.db.transaction() as cur:
            job = find_job(cur, props["job_name"])
            if job is not None and job["managed_by"] not in (None, props["owner"]):
                raise OwnershipError(f"pg_cron job {props['job_name']} is managed by Pulumi stack {job['managed_by']}")
            if job is not None:
                what = f"pg_cron job {props['job_name']}"
                refuse_stale_instance(cur, props, what, job_marker(cur, props["job_name"]))
            command = job_command(props["owner"], props["resolved_schedule"], props.get("instance"))
            expected = scheduled_connection(cur)
            cur.execute("SELECT cron.schedule(%s, %s, %s)", (props["job_name"], props["resolved_schedule"], command))
            job = find_job(cur, props["job_name"])
            if not job["active"]:
                # cron.alter_job is not granted to postgres on pg_cron 1.4; its table is (Supabase's docs).
                cur.execute("UPDATE cron.job SET active = true WHERE jobid = %s", (job["jobid"],))
                job = find_job(cur, props["job_name"])
            if connection_drift(job["connection"], expected):
                # cron.schedule keeps an existing job's connection: put back what it gives a new job. (The
                # username cannot drift here: pg_cron's row security shows a role only its own jobs.)
                cur.execute(
                    "UPDATE cron.job SET database = %s, nodename = %s, nodeport = %s WHERE jobid = %s",
                    (expected["database"], expected["nodename"], expected["nodeport"], job["jobid"]),
                )
                job = find_job(cur, props["job_name"])
        return {**props, **job, "expected_connection": expected}

    def create(self, props: dict[str, Any]) -> CreateResult:
        outs = self._schedule(props)
        return CreateResult(str(outs["jobid"]), outs)

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(self._schedule(news))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        with self.db.transaction() as cur:
            job = find_job(cur, props["job_name"])
            # State written before the connection was compared learns it at its first refresh.
            expected = props.get("expected_connection") or (scheduled_connection(cur) if job else None)
        if job is None:
            return ReadResult(None, {})
        return ReadResult(str(job["jobid"]), {**props, **job, "expected_connection": expected})

    def diff(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = [key for key in (*INPUTS, "resolved_schedule") if olds.get(key) != news.get(key)]
        # The command names the instance that wrote it: the state's, so older state (none) shows no change.
        changed += [key for key, value in desired_state(news, olds.get("instance")).items() if olds.get(key) != value]
        changed += connection_drift(olds.get("connection"), olds.get("expected_connection"))
        return DiffResult(changes=bool(changed), replaces=[], delete_before_replace=False)

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        with self.db.transaction() as cur:
            job = find_job(cur, props["job_name"])
            if job is None or job["managed_by"] != props["owner"]:
                return
            refuse_stale_instance(cur, props, f"pg_cron job {props['job_name']}", job_marker(cur, props["job_name"]))
            waiting = undelivered(cur)
            if waiting:
                # Dead events too: once the job is gone, a replayed event would wait forever, so the
                # way out of the outbox's own refusal (replay, or purge) must be taken while it runs.
                raise RuntimeError(
                    f"refusing to unschedule pg_cron job {props['job_name']}: {describe_counts(waiting)} webhook "
                    f"events are undelivered and nothing else would send them. {waiting_advice(waiting)}"
                )
            cur.execute("SELECT cron.unschedule(%s)", (props["job_name"],))


def waiting_advice(waiting: dict[str, int]) -> str:
    """How to get past a refusal while the job still runs: it retries pending and failed events itself."""
    statuses = ",".join(waiting)
    retried = "The job keeps retrying pending and failed events" if set(waiting) - {"dead"} else "The job still runs"
    replay = f"; replay dead ones with `{OPERATOR_COMMAND} replay` and it sends them again" if "dead" in waiting else ""
    return (
        f"{retried}{replay}. Run destroy again once `{OPERATOR_COMMAND} status` shows none undelivered, or discard "
        f"them for good with `{OPERATOR_COMMAND} purge --status {statuses} --yes`"
    )


class ReconcilerSchedule(pulumi.dynamic.Resource, module="secure-webhooks", name="ReconcilerSchedule"):
    """The pg_cron job that runs the reconciler loop."""

    live_schedule: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        schedule: str,
        owner: str,
        opts: pulumi.ResourceOptions | None = None,
        instance: pulumi.Input[str] | None = None,
        key_names: KeyNames = STACK_CONFIG,
    ) -> None:
        props = {
            "owner": owner,
            "instance": instance_input(instance, opts),
            "schedule": schedule,
            "job_name": JOB_NAME,
            "resolved_schedule": None,
            "live_schedule": None,
            **key_names.prop,
        }
        super().__init__(ScheduleProvider(), name, props, opts)

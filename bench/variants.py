"""The webhook setups under comparison, each on its own table of the same shape.

Every variant gets a copy of `public.resumes` (the table the seed's webhooks fire
on), so they differ only in what fires after an insert. Each one is installed
the way it is installed for real: (b) as the Dashboard creates a Database
Webhook, (c) from the seed plan's SQL verbatim, (d) and (e) through our
providers' own install functions, so the benchmark can never drift from the SQL
we ship. (e) is the at-least-once mode: its trigger only writes the outbox, so
it also installs the outbox and the reconciler, as `pulumi up` does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

import psycopg
from psycopg import sql

from local_supabase.bootstrap import create_demo_tables
from secure_webhooks.configuration.delivery_settings import DeliverySettings
from secure_webhooks.delivery.outbox import script_sha256
from secure_webhooks.delivery.outbox_provider import OutboxProvider
from secure_webhooks.delivery.reconciler import ReconcilerSpec, Route
from secure_webhooks.delivery.reconciler_provider import ReconcilerProvider, reconciler_props
from secure_webhooks.installation import trigger_provider
from secure_webhooks.signing import function_provider
from secure_webhooks.signing.trigger_function import FunctionSpec

#: Nothing listens there; the pg_net worker does not run while we measure cost anyway.
#: The delivery measurements re-point the triggers at a receiver (`Variant.install` with its URL).
URL = "http://127.0.0.1:9/x"
TRIGGER_NAME = "bench_webhook"
OWNER = "secure-webhooks/bench"
#: The seed hard-codes this name, and it is our FunctionSpec's default too.
SECRET_NAME = FunctionSpec().secret_name
#: The static-header webhook's arguments, as the Dashboard writes them.
STATIC_WEBHOOK_ARGS = (URL, "POST", '{"Content-Type":"application/json"}', "{}", "5000")
#: The seed plan's function, copied byte for byte from its SQL block in
#: ../shared/seed/secure-database-webhooks-plan.md (bench/seed_function.sql).
SEED_FUNCTION_SQL = resources.files(__package__).joinpath("seed_function.sql").read_text(encoding="utf-8")
SEED_FUNCTION = sql.SQL("public.notify_orchestrator_secure")

#: Installs (or re-points, idempotently) a variant's webhook on its table, posting to the URL.
Installer = Callable[[psycopg.Connection, "Variant", str], None]


@dataclass(frozen=True)
class Variant:
    """One column of the comparison: a table plus what fires on INSERT into it."""

    key: str
    label: str
    table: str
    install: Installer
    #: Requests queued in net.http_request_queue per inserted row (checked after every run).
    queues_request: bool
    #: Rows logged in supabase_functions.hooks per inserted row (Supabase's audit trail).
    logs_hook: bool
    #: Whether queued requests carry a Bearer JWT that the benchmark verifies.
    signs: bool
    #: Rows written to the outbox (secure_webhooks.events) per inserted row: at-least-once mode.
    writes_outbox: bool = False
    #: Whether each queued token is bound to its request (`jti`, `body_sha256`): one HMAC per row.
    binds: bool = False

    @property
    def table_id(self) -> sql.Composed:
        return sql.SQL("public.{}").format(sql.Identifier(self.table))


def _no_trigger(conn: psycopg.Connection, variant: Variant, url: str) -> None:
    """Baseline: what the insert costs with no webhook at all."""


def _row_trigger(conn: psycopg.Connection, variant: Variant, function: sql.Composable, args: tuple[str, ...]) -> None:
    conn.execute(
        sql.SQL("CREATE OR REPLACE TRIGGER {} AFTER INSERT ON {} FOR EACH ROW EXECUTE FUNCTION {}({})").format(
            sql.Identifier(TRIGGER_NAME),
            variant.table_id,
            function,
            sql.SQL(", ").join(sql.Literal(arg) for arg in args),
        )
    )


def _static_webhook(conn: psycopg.Connection, variant: Variant, url: str) -> None:
    """Supabase's Database Webhook: supabase_functions.http_request with static headers."""
    _row_trigger(conn, variant, sql.SQL("supabase_functions.http_request"), (url, *STATIC_WEBHOOK_ARGS[1:]))


def _seed(conn: psycopg.Connection, variant: Variant, url: str) -> None:
    """The seed plan's function exactly as written, fired per row as the plan does."""
    conn.execute(sql.SQL(SEED_FUNCTION_SQL))  # our own file, never user input
    _row_trigger(conn, variant, SEED_FUNCTION, (url,))


def reconciler_spec(function: FunctionSpec) -> ReconcilerSpec:
    """The reconciler as a stack with default delivery settings installs it for `function`."""
    return ReconcilerSpec(function=function, delivery=DeliverySettings())


def _install_outbox(cur: psycopg.Cursor, function: FunctionSpec) -> None:
    """The outbox schema and the reconciler's functions, through their providers' install methods."""
    OutboxProvider().install(cur, {"owner": OWNER, "script_sha256": script_sha256()}, None)
    ReconcilerProvider().install(cur, reconciler_props(reconciler_spec(function), OWNER), None)


def _spec(name: str, signer: str, mode: str, bind_request: bool = True, ordering: str = "none") -> FunctionSpec:
    return FunctionSpec(name=name, signer=signer, mode=mode, bind_request=bind_request, ordering=ordering)


#: (e)'s function; the reconciler signs with its settings (the ordered variant's differ only in name and order).
OUTBOX_FUNCTION = _spec("bench_notify_outbox", "pgcrypto", "at-least-once")


#: At-least-once webhooks also fire on UPDATE (a second trigger, as a stack's `events: [INSERT, UPDATE]`
#: installs it): the ordering measurement changes rows after inserting them. An insert never fires it.
UPDATE_TRIGGER_NAME = TRIGGER_NAME + "_update"


def _ours(
    name: str, signer: str, mode: str = "direct", *, bind_request: bool = True, ordering: str = "none"
) -> Installer:
    """Our function and INSERT trigger (and for at-least-once the outbox and an UPDATE trigger), as the
    providers install them.

    `bind_request` is FunctionSpec's default (one token per row); False is the old body, one per statement.
    """

    def install(conn: psycopg.Connection, variant: Variant, url: str) -> None:
        spec = _spec(name, signer, mode, bind_request, ordering)
        events = ("INSERT", "UPDATE") if mode == "at-least-once" else ("INSERT",)
        with conn.transaction(), conn.cursor() as cur:
            if mode == "at-least-once":
                _install_outbox(cur, spec)
            function_provider.install(cur, spec, OWNER)
            for event, trigger_name in zip(events, (TRIGGER_NAME, UPDATE_TRIGGER_NAME), strict=False):
                props = trigger_provider.trigger_props(
                    schema="public", table=variant.table, name=trigger_name, event=event, url=url, function=spec,
                    owner=OWNER,
                )  # fmt: skip
                trigger_provider.install(cur, props)

    return install


VARIANTS = (
    Variant("a", "(a) no trigger", "bench_a_plain", _no_trigger, queues_request=False, logs_hook=False, signs=False),
    Variant("b", "(b) Supabase webhook", "bench_b_static", _static_webhook, queues_request=True, logs_hook=True,
            signs=False),
    Variant("c", "(c) seed, per row", "bench_c_seed", _seed, queues_request=True, logs_hook=False, signs=True),
    Variant("d-pgjwt", "(d) ours, pgjwt", "bench_d_pgjwt", _ours("bench_notify_pgjwt", "pgjwt"),
            queues_request=True, logs_hook=False, signs=True, binds=True),
    Variant("d-pgcrypto", "(d) ours, pgcrypto", "bench_d_pgcrypto", _ours("bench_notify_pgcrypto", "pgcrypto"),
            queues_request=True, logs_hook=False, signs=True, binds=True),
    Variant("d-unbound", "(d) ours, pgcrypto, unbound", "bench_d_unbound",
            _ours("bench_notify_unbound", "pgcrypto", bind_request=False),
            queues_request=True, logs_hook=False, signs=True),
    Variant("e", "(e) ours, at-least-once", "bench_e_outbox",
            _ours(OUTBOX_FUNCTION.name, OUTBOX_FUNCTION.signer, OUTBOX_FUNCTION.mode),
            queues_request=False, logs_hook=False, signs=False, writes_outbox=True),
)  # fmt: skip
#: Installed beside the cost table's variants, not part of it: (e) with `delivery.ordering: per-row`,
#: whose trigger also records each event's commit sequence and row key (bench/ordering.py compares it with (e)).
ORDERED_VARIANT = Variant(
    "e-per-row", "(e) ours, at-least-once, per-row order", "bench_e_ordered",
    _ours("bench_notify_ordered", "pgcrypto", "at-least-once", ordering="per-row"),
    queues_request=False, logs_hook=False, signs=False, writes_outbox=True,
)  # fmt: skip
#: Every table the bench installs: the cost table's variants and the ordered one.
INSTALLED = (*VARIANTS, ORDERED_VARIANT)
VARIANTS_BY_KEY = {variant.key: variant for variant in INSTALLED}


def install_reconciler(conn: psycopg.Connection, delivery: DeliverySettings, url: str) -> None:
    """Re-install the reconciler with other delivery settings (limits, ordering), as `pulumi up` would.

    With the routes of every at-least-once webhook posting to `url`: per-row order keeps a row's INSERT
    and UPDATE events (two triggers of one webhook) in order only when the stack routes them together.
    """
    routes = tuple(
        Route("public", variant.table, name, url)
        for variant in INSTALLED
        if variant.writes_outbox
        for name in (TRIGGER_NAME, UPDATE_TRIGGER_NAME)
    )
    spec = ReconcilerSpec(function=OUTBOX_FUNCTION, delivery=delivery, routes=routes)
    with conn.transaction(), conn.cursor() as cur:
        ReconcilerProvider().install(cur, reconciler_props(spec, OWNER), None)


#: Width of the variant column in the tables.
LABEL_WIDTH = max(len(variant.label) for variant in VARIANTS)
BASELINE = "b"
#: Ours in direct mode with the default signer (bound tokens), and ours in the default (at-least-once) mode.
DIRECT, AT_LEAST_ONCE = "d-pgcrypto", "e"
#: Ours in direct mode with one token per statement (bind_request=False), the body before binding.
UNBOUND = "d-unbound"


def install_all(conn: psycopg.Connection, jwt_secret: str) -> None:
    """Prepare the database as our stack would find it, then install every variant.

    Runs as `postgres` (what Pulumi and the seed's migration use): pg_net in
    `extensions`, the signing secret in the Vault, and one table per variant.
    """
    conn.execute("CREATE EXTENSION IF NOT EXISTS pg_net WITH SCHEMA extensions")
    conn.execute("SELECT vault.create_secret(%s, %s)", (jwt_secret, SECRET_NAME))
    create_demo_tables(conn)
    for variant in INSTALLED:
        # LIKE ... INCLUDING ALL: the exact shape of public.resumes, defaults and primary key included.
        conn.execute(sql.SQL("CREATE TABLE {} (LIKE public.resumes INCLUDING ALL)").format(variant.table_id))
        variant.install(conn, variant, URL)

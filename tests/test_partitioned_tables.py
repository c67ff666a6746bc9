"""Webhooks on a partitioned table (issue 10 #18).

A statement trigger on a partitioned table fires only for statements that
name the parent, and a row trigger fires on the partition that holds the row.
So before, INSERT and DELETE said `table: <parent>`, UPDATE said
`table: <partition>`, and a write made straight into a partition sent nothing.
Now every event of a partitioned table fires per row on every partition
(present and future, PostgreSQL clones the trigger), and the payload names the
configured table, the parent, whichever partition holds the row.
"""

from __future__ import annotations

import psycopg
from outbox_support import TEST_DELIVERY, all_delivered, install_pipeline, settle
from providers import configured, function_props, trigger_props, unique
from psycopg import sql

from local_supabase.orchestrator import WebhookReceiver
from secure_webhooks.installation.trigger_provider import WebhookTriggerProvider
from secure_webhooks.signing.function_provider import SecureFunctionProvider
from secure_webhooks.signing.trigger_function import FunctionSpec

LEDGER = """
CREATE TABLE public.ledger (id bigserial, region text NOT NULL, name text, PRIMARY KEY (region, id))
  PARTITION BY LIST (region);
CREATE TABLE public.ledger_eu PARTITION OF public.ledger FOR VALUES IN ('eu');
CREATE TABLE public.ledger_us PARTITION OF public.ledger FOR VALUES IN ('us');
GRANT ALL ON public.ledger TO authenticated;
GRANT USAGE ON SEQUENCE public.ledger_id_seq TO authenticated;
"""

#: Writes through the parent and straight into partitions, one created after the triggers.
WRITES = (
    "INSERT INTO public.ledger (region, name) VALUES ('eu', 'via-parent')",
    "INSERT INTO public.ledger_us (region, name) VALUES ('us', 'into-partition')",
    "CREATE TABLE public.ledger_asia PARTITION OF public.ledger FOR VALUES IN ('asia')",
    "INSERT INTO public.ledger_asia (region, name) VALUES ('asia', 'new-partition')",
    "UPDATE public.ledger SET name = 'updated-via-parent' WHERE name = 'via-parent'",
    "UPDATE public.ledger_us SET name = 'updated-in-partition' WHERE name = 'into-partition'",
    "DELETE FROM public.ledger WHERE region = 'eu'",
    "DELETE FROM public.ledger_asia",
)
EXPECTED = {"INSERT": 3, "UPDATE": 2, "DELETE": 2}


def install_triggers(cluster, spec: FunctionSpec, url: str) -> list[tuple[WebhookTriggerProvider, object]]:
    triggers = configured(WebhookTriggerProvider, cluster)
    return [
        (triggers, triggers.create(trigger_props("ledger", f"ledger_{event.lower()}", url, spec, event=event)))
        for event in EXPECTED
    ]


def write_and_count(conn: psycopg.Connection, deliveries) -> None:
    for statement in WRITES:
        conn.execute(statement)
    events = [(d.body["type"], d.body["schema"], d.body["table"]) for d in deliveries() if d.status == 200]
    counted = {op: sum(1 for t, _, _ in events if t == op) for op in EXPECTED}
    print(f"\npartitioned: {len(WRITES)} writes, expected {EXPECTED}, delivered {counted}")
    assert counted == EXPECTED
    assert {(schema, table) for _, schema, table in events} == {("public", "ledger")}


def assert_no_drift(installed) -> None:
    for provider, created in installed:
        read = provider.read(created.id, created.outs)
        assert provider.diff(created.id, read.outs, created.outs).changes is False, read.outs
        assert read.outs["level"] == "ROW" and read.outs["partitioned"] is True


def test_direct_mode_names_the_parent_and_delivers_writes_into_partitions(
    supabase_ready, pg_net_worker, receiver_secret, postgres_conn
):
    postgres_conn.execute(LEDGER)
    spec = FunctionSpec(name=unique("notify"), token_ttl_seconds=300)
    functions = configured(SecureFunctionProvider, supabase_ready)
    function = functions.create(function_props(spec))
    with WebhookReceiver(receiver_secret) as orchestrator:
        installed = install_triggers(supabase_ready, spec, orchestrator.url + "/ledger")
        try:
            assert_no_drift(installed)
            write_and_count(postgres_conn, lambda: orchestrator.wait_for(sum(EXPECTED.values())))
        finally:
            pg_net_worker.drain()
            for provider, created in installed:
                provider.delete(created.id, created.outs)
            functions.delete(function.id, function.outs)
            postgres_conn.execute("DROP TABLE public.ledger")


def test_at_least_once_names_the_parent_and_delivers_writes_into_partitions(
    supabase_ready, pg_net_worker, receiver_secret, postgres_conn
):
    postgres_conn.execute(LEDGER)
    pipeline = install_pipeline(supabase_ready, TEST_DELIVERY)
    try:
        with WebhookReceiver(receiver_secret) as orchestrator:
            installed = install_triggers(supabase_ready, pipeline.spec, orchestrator.url + "/ledger")
            pipeline.installed.extend(installed)
            assert_no_drift(installed)

            def delivered():
                settle(postgres_conn, pg_net_worker, all_delivered(postgres_conn))
                return orchestrator.wait_for(sum(EXPECTED.values()))

            write_and_count(postgres_conn, delivered)
            # Each attempt went to the URL of the live trigger on the parent, found from the payload's table.
            live = postgres_conn.execute(
                "SELECT count(*) FROM secure_webhooks.events e WHERE e.url <> %s", (orchestrator.url + "/ledger",)
            ).fetchone()[0]
            assert live == 0
    finally:
        pipeline.remove()
        postgres_conn.execute("DROP TABLE public.ledger")


def test_a_statement_trigger_left_by_earlier_code_is_drift_that_update_repairs(supabase_ready, postgres_conn):
    """Stacks deployed before this fix have statement-level INSERT triggers on partitioned tables:
    `pulumi up --refresh` must see them and move them to row triggers."""
    postgres_conn.execute(LEDGER)
    spec = FunctionSpec(name=unique("notify"), token_ttl_seconds=300)
    functions = configured(SecureFunctionProvider, supabase_ready)
    function = functions.create(function_props(spec))
    triggers = configured(WebhookTriggerProvider, supabase_ready)
    props = trigger_props("ledger", "ledger_insert", "https://api.example.com/ledger", spec)
    created = triggers.create(props)
    try:
        with postgres_conn.transaction():  # what the earlier code created, our marker kept
            comment = postgres_conn.execute(
                "SELECT obj_description(oid, 'pg_trigger') FROM pg_trigger WHERE tgname = 'ledger_insert'"
                " AND tgrelid = 'public.ledger'::regclass"
            ).fetchone()[0]
            postgres_conn.execute("DROP TRIGGER ledger_insert ON public.ledger")
            postgres_conn.execute(
                f"CREATE TRIGGER ledger_insert AFTER INSERT ON public.ledger REFERENCING NEW TABLE AS new_rows"
                f" FOR EACH STATEMENT EXECUTE FUNCTION public.{spec.name}('https://api.example.com/ledger')"
            )
            postgres_conn.execute(
                sql.SQL("COMMENT ON TRIGGER ledger_insert ON public.ledger IS {}").format(sql.Literal(comment))
            )
        drifted = triggers.read(created.id, created.outs).outs
        assert drifted["level"] == "STATEMENT" and drifted["definition_matches"] is False
        assert triggers.diff(created.id, drifted, props).changes is True
        triggers.update(created.id, drifted, props)
        assert_no_drift([(triggers, created)])
    finally:
        triggers.delete(created.id, created.outs)
        functions.delete(function.id, function.outs)
        postgres_conn.execute("DROP TABLE public.ledger")

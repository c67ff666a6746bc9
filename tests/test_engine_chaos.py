"""Issue 15's chaos case, through the real engine: every integrity attack at once, and nothing is lost.

One run mixes a poison event, a role planting forged 200s all along, a takeover by
the same-named stack in another backend (which drops a webhook from config while
its events wait), a same-named foreign trigger for those events, the old
instance's destroy, and `Retry-After: 0`. The healthy rows all reach the
configured URL, and only it; the counts are printed.
"""

from __future__ import annotations

import threading

import psycopg
from engine_support import JWT_SECRET
from outbox_support import tally
from psycopg import sql
from psycopg.types.json import Jsonb
from test_engine_instances import everything, in_another_backend

from local_supabase.orchestrator import PlannedResponse, WebhookReceiver
from local_supabase.pg_net_worker import ROUND_WAIT
from local_supabase.ports import hold_port
from local_supabase.scripted_server import ScriptedServer
from secure_webhooks.configuration.settings import DEFAULT_WEBHOOKS

FAST_RETRIES = {"retryInitialSeconds": 1, "retryMultiplier": 1, "retryJitter": 0, "maxAttempts": 100}
#: How long an event keeps being retried at least (each attempt waits out the retry delay, then pg_net's
#: next round): the bound of the waits for events to fail or be delivered, however busy the machine.
RETRYING_SECONDS = FAST_RETRIES["maxAttempts"] * (FAST_RETRIES["retryInitialSeconds"] + ROUND_WAIT)
RESUMES, ZIPS = DEFAULT_WEBHOOKS
PLANT = """
INSERT INTO net._http_response (id, status_code, headers, created)
SELECT g, 200, '{"webhook-receipt": "v1,forged"}', c
  FROM pg_catalog.generate_series(
         (SELECT last_value - 20 FROM net.http_request_queue_id_seq),
         (SELECT last_value + 20 FROM net.http_request_queue_id_seq)) AS g,
       (VALUES (pg_catalog.now()), (timestamptz '2100-01-01')) AS t(c)
"""


class Forger(threading.Thread):
    """A role with no grants planting 200s (dated now and in 2100) around pg_net's current request id."""

    def __init__(self, dsn: str, password: str) -> None:
        super().__init__(daemon=True)
        self.dsn, self.password = dsn, password
        self.stopped = threading.Event()
        self.planted = 0

    def run(self) -> None:
        with psycopg.connect(self.dsn, password=self.password, autocommit=True) as conn:
            conn.execute("SET ROLE forger")
            while not self.stopped.wait(0.05):  # pacing, not a wait for a condition
                self.planted += conn.execute(PLANT).rowcount

    def __enter__(self) -> Forger:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.join()


def test_poison_forgery_takeover_foreign_trigger_and_retry_after_lose_nothing(engine, tmp_path):
    first = engine.stack("dev", delivery={**FAST_RETRIES, "receipts": "required"})
    first.up()
    instance = first.outputs()["instance"]
    port = int(engine.orchestrator.url.rsplit(":", 1)[1])
    engine.orchestrator.stop()  # down: every attempt fails until it is back
    hold_port(port)  # ... there, and nothing else takes the port meanwhile (local_supabase/ports.py)

    with engine.connect() as conn:
        conn.execute("CREATE ROLE forger NOLOGIN")
        conn.execute("GRANT forger TO postgres")
        conn.execute("CREATE ROLE intruder NOLOGIN")
        conn.execute("GRANT intruder TO postgres")
        conn.execute("GRANT ALL ON ALL TABLES IN SCHEMA public TO intruder")
        # A poison event: recorded long ago with a URL pg_net refuses, first in line.
        conn.execute(
            "INSERT INTO secure_webhooks.events (webhook, url, payload, next_attempt_at)"
            " VALUES ('legacy-hook', 'http://orchestrator{.example/ingest', %s, now() - interval '1 day')",
            (Jsonb({"type": "INSERT", "table": "resumes", "schema": "public", "record": {"id": -1}}),),
        )
    with (
        Forger(engine.cluster.dsn("postgres"), engine.cluster.password_for("postgres")) as forger,
        ScriptedServer() as evil,
    ):
        rows: dict[str, list[int]] = {"resumes": [], "zip_archives": []}
        with engine.connect() as conn:
            for n in range(5):
                for table in rows:
                    query = sql.SQL("INSERT INTO public.{} (name, storage_path) VALUES (%s, 'p/') RETURNING id")
                    rows[table].append(conn.execute(query.format(sql.Identifier(table)), (f"chaos-{n}",)).fetchone()[0])
            # Every event has failed an attempt (a count of "failed" ones would race the retries in flight).
            engine.wait_until_failed_once(conn, 11, timeout=RETRYING_SECONDS)

        # The same-named stack in another backend takes over, without the zip_archives webhook.
        successor = in_another_backend(engine, tmp_path / "other-backend").stack(
            "dev",
            delivery={**FAST_RETRIES, "receipts": "required"},
            webhooks=[dict(RESUMES)],
            replacesInstance=instance,
        )
        successor.up()
        with engine.connect() as conn:
            # The dropped webhook's trigger is then dropped out of band while its events wait, and a role
            # with table privileges takes the name.
            conn.execute(sql.SQL("DROP TRIGGER {} ON public.zip_archives").format(sql.Identifier(ZIPS["name"])))
            conn.execute("SET ROLE intruder")
            conn.execute(
                sql.SQL(
                    "CREATE TRIGGER {} AFTER TRUNCATE ON public.zip_archives FOR EACH STATEMENT"
                    " EXECUTE FUNCTION pg_catalog.suppress_redundant_updates_trigger({})"
                ).format(sql.Identifier(ZIPS["name"]), sql.Literal(evil.url + "/steal"))
            )
            conn.execute("RESET ROLE")
            taken_over = everything(conn)
        # The old instance's destroy changes nothing of the new owner's.
        first.destroy(check=False)
        with engine.connect() as conn:
            assert everything(conn) == taken_over, "the old instance's destroy changed the new owner's install"

        with WebhookReceiver(JWT_SECRET, port=port) as back:
            back.plan(PlannedResponse(503, headers={"Retry-After": "0"}))
            back.wait_for(11, timeout=RETRYING_SECONDS)
            with engine.connect() as conn:
                engine.wait_for_status(conn, "delivered", 10, timeout=RETRYING_SECONDS)
                waiting = dict(conn.execute("SELECT status, count(*) FROM secure_webhooks.deliveries GROUP BY 1"))
                poison = conn.execute(
                    "SELECT last_error FROM secure_webhooks.deliveries WHERE webhook = 'legacy-hook'"
                ).fetchone()[0]
            by_path = {
                webhook["path"]: [d for d in back.deliveries if d.path == webhook["path"]]
                for webhook in (RESUMES, ZIPS)
            }
        resumes = tally(rows["resumes"], by_path[RESUMES["path"]])
        zips = tally(rows["zip_archives"], by_path[ZIPS["path"]])
    # The poison event fails within its round (no wait for pg_net), so its maxAttempts last about 100 s, not
    # the RETRYING_SECONDS the others get: on a busy machine the takeover's `up` and the old stack's destroy
    # above outlast them and it is dead. Failed or dead, it is the one undelivered event, and never sent.
    poison_status = " and ".join(sorted(set(waiting) - {"delivered"}))
    print(
        f"\nchaos: resumes {resumes}; zip_archives {zips}; sent elsewhere {len(evil.received)};"
        f" forged responses planted {forger.planted}; poison event {poison_status} ({poison})"
    )
    assert (resumes.delivered, resumes.lost, zips.delivered, zips.lost) == (5, 0, 5, 0)
    assert evil.received == [] and forger.planted > 0
    assert waiting in ({"delivered": 10, "failed": 1}, {"delivered": 10, "dead": 1}), waiting
    assert "invalid URL" in poison
    with engine.connect() as conn:
        conn.execute(sql.SQL("DROP TRIGGER {} ON public.zip_archives").format(sql.Identifier(ZIPS["name"])))
        conn.execute("SELECT secure_webhooks.purge(ARRAY['failed', 'dead'])")
    successor.destroy()

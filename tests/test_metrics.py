"""The outbox's Prometheus metrics on a real outbox, scraped by a real Prometheus over loopback.

Every state the metrics report is made by real deliveries through the stand-in pg_net: a receiver that
answers 410, 500, 503, too late (a timeout) and 200, then events inserted with no round after them
(pending, set an hour back in SQL). The dead event's alert is posted to an alert URL answering 500 until it
fails for good. Each metric is read back with a PromQL query and compared with what
the outbox holds, counted in SQL. Nothing waits a guessed time: every wait is for a condition.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alert_support import SLACK_PATH, alert_rows, keep_alert_url, retry_until_failed, run_rounds
from outbox_support import TIMEOUT_MS, insert_rows, install_pipeline, settle, statuses
from prometheus_client.parser import text_string_to_metric_families
from waiting import eventually

from local_supabase.cluster import free_port
from local_supabase.orchestrator import PlannedResponse, WebhookReceiver
from local_supabase.pg_net_worker import PgNetWorker
from local_supabase.scripted_server import Reply, ScriptedServer
from secure_webhooks.configuration.delivery_settings import DeliverySettings
from secure_webhooks.delivery.alerts import ALERT_URL_SECRET, KINDS, MAX_ATTEMPTS, STATES
from secure_webhooks.delivery.reconciler import JOB_NAME
from webhook_deliveries.__main__ import main
from webhook_deliveries.metrics import LATENCY_BUCKETS
from webhook_deliveries.serving import APPLICATION_NAME

SECRET = "metrics-test-signing-secret-" + "0123456789abcdef" * 2
WEBHOOK = "resumes_hook"
REPO = Path(__file__).resolve().parent.parent
ALERT_RULES = REPO / "deploy" / "prometheus" / "alerts.yml"
#: A retry an hour away: the failed events stay failed for the whole test.
SLOW_RETRIES = DeliverySettings(
    retry_initial_seconds=3600, retry_multiplier=2, retry_max_seconds=3600, retry_jitter=0, max_attempts=6
)
#: What the receiver answers the first six requests: one dead (410), three failed (500, 503, and one answered
#: 2 s after the timeout), two delivered.
PLAN = (
    PlannedResponse(410),
    PlannedResponse(500),
    PlannedResponse(503),
    PlannedResponse(200, delay=TIMEOUT_MS / 1000 + 2),
)
EXPECTED_EVENTS = {"dead": 1, "failed": 3, "pending": 2}
EXPECTED_ATTEMPTS = {"2xx": 2, "4xx": 1, "5xx": 2, "timeout": 1}
WINDOW = "1h"
#: Prometheus' scrape interval and timeout. A scrape that runs out of time fails, and a failed scrape marks every
#: series stale, so a query right after it finds nothing: 5 s, not 1 s, for an exporter on a loaded machine.
SCRAPE_SECONDS = 5
#: Every kind and state is exported, zero included; the dead event's alert could not be posted, and a paused
#: endpoint's alert has waited two hours to be posted (stuck).
EXPECTED_ALERTS = {(kind, state): 0.0 for kind, state in itertools.product(KINDS, STATES)} | {
    ("events.dead", "failed"): 1.0,
    ("endpoint.paused", "pending"): 1.0,
}


@dataclass
class Outbox:
    """What the outbox holds, as SQL counts it: the figures every metric must show."""

    dsn: str
    conn: psycopg.Connection
    pending_created_at: datetime
    last_run_ended_at: datetime
    alert_failed_at: datetime
    alert_stuck_since: datetime

    def latencies(self, query: str) -> dict[str, float]:
        """Cumulative count per bucket bound (`le`), as Prometheus labels them, of the latencies `query` selects."""
        values = [row[0] for row in self.conn.execute(query).fetchall()]
        buckets = {repr(bound): float(sum(value <= bound for value in values)) for bound in LATENCY_BUCKETS}
        return {**buckets, "+Inf": float(len(values))}

    def delivery_latencies(self) -> dict[str, float]:
        return self.latencies(
            "SELECT EXTRACT(epoch FROM delivered_at - created_at)::float8 FROM secure_webhooks.events"
            " WHERE state = 'delivered'"
        )

    def first_attempt_latencies(self) -> dict[str, float]:
        return self.latencies(
            "SELECT EXTRACT(epoch FROM a.finished_at - e.created_at)::float8 FROM secure_webhooks.attempts AS a"
            " JOIN secure_webhooks.events AS e ON e.id = a.event_id WHERE a.attempt = 1 AND a.finished_at IS NOT NULL"
        )

    def delivery_latency_sum(self) -> float:
        return self.conn.execute(
            "SELECT sum(EXTRACT(epoch FROM delivered_at - created_at))::float8 FROM secure_webhooks.events"
            " WHERE state = 'delivered'"
        ).fetchone()[0]


@pytest.fixture(scope="module")
def outbox(cluster) -> Iterator[Outbox]:
    with (
        WebhookReceiver(SECRET) as receiver,
        PgNetWorker(cluster.admin_dsn) as worker,
        ScriptedServer(Reply(500)) as alert_url,
    ):
        vault, alert_secret = keep_alert_url(cluster, alert_url.url + SLACK_PATH)
        pipeline = install_pipeline(
            cluster, delivery=dataclasses.replace(SLOW_RETRIES, alert_url_secret=ALERT_URL_SECRET)
        )
        conn = pipeline.connect()
        try:
            pipeline.add_trigger("resumes", receiver.url + "/ingest/interns/individual", name=WEBHOOK)
            receiver.plan(*PLAN)
            insert_rows(conn, "resumes", 6, prefix="sent")
            settle(conn, worker, lambda: statuses(conn) == {"delivered": 2, "failed": 3, "dead": 1})
            run_rounds(conn, worker, lambda: bool(alert_rows(conn)), "the dead event's alert")
            retry_until_failed(conn, worker)
            assert alert_rows(conn) == [("events.dead", "failed", MAX_ATTEMPTS)]
            assert len(alert_url.received) == MAX_ATTEMPTS
            (alert_failed_at,) = conn.execute("SELECT finished_at FROM secure_webhooks.alerts").fetchone()
            (alert_stuck_since,) = conn.execute(  # no round runs after it: it stays pending
                "INSERT INTO secure_webhooks.alerts (kind, body, state, created_at)"
                " VALUES ('endpoint.paused', '{}', 'pending', now() - interval '2 hours') RETURNING created_at"
            ).fetchone()
            insert_rows(conn, "resumes", 2, prefix="waiting")  # no round runs after them: they stay pending
            (pending_created_at,) = conn.execute(
                "UPDATE secure_webhooks.events SET created_at = now() - interval '1 hour'"
                " WHERE state = 'pending' AND attempts = 0 RETURNING created_at"
            ).fetchall()[0]
            (job,) = conn.execute("SELECT cron.schedule(%s, '0 0 1 1 *', 'SELECT 1')", (JOB_NAME,)).fetchone()
            (last_run_ended_at,) = conn.execute(
                "INSERT INTO cron.job_run_details (jobid, runid, job_pid, database, username, command, status,"
                " return_message, start_time, end_time)"
                " VALUES (%s, (SELECT coalesce(max(runid), 0) + 1 FROM cron.job_run_details), 1, 'postgres',"
                " 'postgres', 'SELECT 1', 'failed', 'ERROR:  a failed round', now(), now()) RETURNING end_time",
                (job,),
            ).fetchone()
            assert {key: statuses(conn).get(key, 0) for key in EXPECTED_EVENTS} == EXPECTED_EVENTS
            yield Outbox(
                cluster.dsn("postgres"), conn, pending_created_at, last_run_ended_at, alert_failed_at, alert_stuck_since
            )
        finally:
            conn.execute("SELECT cron.unschedule(jobid) FROM cron.job WHERE jobname = %s", (JOB_NAME,))
            conn.close()
            pipeline.remove()
            vault.delete(alert_secret.id, alert_secret.outs)


@contextmanager
def serving(dsn: str, listen: str = "127.0.0.1:0") -> Iterator[str]:
    """`python -m webhook_deliveries serve-metrics` on a free loopback port; yields its /metrics URL."""
    command = [sys.executable, "-m", "webhook_deliveries", "--dsn", dsn]
    command += ["serve-metrics", "--listen", listen, "--window", WINDOW]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()  # printed once it listens; EOF if it exited
        host = listen.rpartition(":")[0]
        assert line.startswith(f"serving metrics on http://{host}:"), line + process.stderr.read()
        yield line.split()[-1]
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def exporter(outbox) -> Iterator[str]:
    """The exporter Prometheus scrapes."""
    with serving(outbox.dsn) as url:
        yield url


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read().decode()


@dataclass
class Prometheus:
    url: str

    def get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=30) as response:
            document = json.load(response)
        assert document["status"] == "success", document
        return document["data"]

    def query(self, promql: str) -> list[tuple[dict[str, str], float]]:
        """An instant query: each series' labels (without Prometheus' job and instance) and value."""
        results = self.get("/api/v1/query", query=promql)["result"]
        dropped = ("__name__", "job", "instance")
        return [
            ({k: v for k, v in item["metric"].items() if k not in dropped}, float(item["value"][1])) for item in results
        ]

    def by(self, label: str, promql: str) -> dict[str, float]:
        return {labels[label]: value for labels, value in self.query(promql)}

    def one(self, promql: str) -> float:
        (result,) = self.query(promql)
        return result[1]


@pytest.fixture(scope="module")
def prometheus(exporter, tmp_path_factory) -> Iterator[Prometheus]:
    """Debian's Prometheus on a free loopback port, scraping the exporter every SCRAPE_SECONDS, with our alert rules."""
    home = tmp_path_factory.mktemp("prometheus")
    target = urllib.parse.urlsplit(exporter).netloc
    config = home / "prometheus.yml"
    config.write_text(
        json.dumps(  # JSON is YAML
            {
                "global": {
                    "scrape_interval": f"{SCRAPE_SECONDS}s",
                    "scrape_timeout": f"{SCRAPE_SECONDS}s",
                    "evaluation_interval": "1s",
                },
                "rule_files": [str(ALERT_RULES)],
                "scrape_configs": [{"job_name": "secure_webhooks", "static_configs": [{"targets": [target]}]}],
            }
        )
    )
    port = free_port()
    log = (home / "prometheus.log").open("w")
    process = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={home / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = Prometheus(f"http://127.0.0.1:{port}")
    try:

        def scraped() -> bool:
            assert process.poll() is None, (home / "prometheus.log").read_text()
            try:
                return bool(server.query("secure_webhooks_database_up == 1"))
            except (urllib.error.URLError, ConnectionError):  # not listening yet
                return False

        eventually(scraped, "Prometheus scraped serve-metrics", 90)
        yield server
    finally:
        process.terminate()
        process.wait(timeout=60)
        log.close()


def test_prometheus_reads_each_metric_as_the_outbox_holds_it(outbox, prometheus):
    assert prometheus.by("status", f'secure_webhooks_events{{webhook="{WEBHOOK}"}}') == EXPECTED_EVENTS
    assert prometheus.by("outcome", f'secure_webhooks_recent_attempts{{webhook="{WEBHOOK}"}}') == EXPECTED_ATTEMPTS
    assert prometheus.by("le", "secure_webhooks_recent_delivery_latency_seconds_bucket") == outbox.delivery_latencies()
    assert prometheus.one("secure_webhooks_recent_delivery_latency_seconds_gsum") == pytest.approx(
        outbox.delivery_latency_sum(), rel=1e-9
    )
    first = prometheus.by("le", "secure_webhooks_recent_first_attempt_latency_seconds_bucket")
    assert first == outbox.first_attempt_latencies() and first["+Inf"] == 6
    # A gauge histogram works with histogram_quantile as it is, without rate(): the median is at most the
    # first bound every delivery is under.
    delivered = outbox.delivery_latencies()
    ceiling = min(float(le) for le, count in delivered.items() if count == delivered["+Inf"])
    median = prometheus.one("histogram_quantile(0.5, secure_webhooks_recent_delivery_latency_seconds_bucket)")
    assert 0 < median <= ceiling

    # The age at the scrape: how long before the sample's own timestamp the oldest pending event was created. The
    # exporter's query runs within the scrape, which starts at that timestamp and ends within its timeout.
    age = 'secure_webhooks_oldest_event_age_seconds{status="pending"}'
    skew = prometheus.one(f"{age} - (timestamp({age}) - {outbox.pending_created_at.timestamp()})")
    assert -1 < skew < SCRAPE_SECONDS, skew
    assert prometheus.one('secure_webhooks_oldest_event_age_seconds{status="failed"}') > 0

    reconciler = {
        name: prometheus.one(f"secure_webhooks_reconciler_{name}")
        for name in ("job_readable", "healthy", "job_present", "job_active", "last_run_succeeded")
    }
    assert reconciler == {
        "job_readable": 1,
        "healthy": 0,
        "job_present": 1,
        "job_active": 1,
        "last_run_succeeded": 0,
    }
    assert prometheus.one("secure_webhooks_reconciler_last_run_end_timestamp_seconds") == pytest.approx(
        outbox.last_run_ended_at.timestamp(), abs=1e-3
    )
    assert prometheus.one("secure_webhooks_recent_window_seconds") == 3600

    held = {(labels["kind"], labels["state"]): value for labels, value in prometheus.query("secure_webhooks_alerts")}
    assert held == EXPECTED_ALERTS
    assert prometheus.by("kind", "secure_webhooks_alert_last_failed_timestamp_seconds") == {
        "events.dead": pytest.approx(outbox.alert_failed_at.timestamp(), abs=1e-3)
    }
    assert prometheus.by("kind", "secure_webhooks_alert_oldest_unposted_timestamp_seconds") == {
        "endpoint.paused": pytest.approx(outbox.alert_stuck_since.timestamp(), abs=1e-3)
    }
    assert prometheus.one("secure_webhooks_database_up") == 1


def test_prometheus_loads_the_shipped_rules_and_fires_on_this_outbox(prometheus):
    def alerts() -> dict[str, str]:
        return {alert["labels"]["alertname"]: alert["state"] for alert in prometheus.get("/api/v1/alerts")["alerts"]}

    # The first evaluation after a scrape fires the dead events' rule; the others wait their `for:`.
    expected = {
        "SecureWebhooksDeadEvents": "firing",
        "SecureWebhooksPendingTooOld": "pending",
        "SecureWebhooksReconcilerUnhealthy": "pending",
        "SecureWebhooksAlertUndelivered": "firing",
        "SecureWebhooksAlertStuck": "firing",
    }
    eventually(lambda: alerts() == expected, "alerts", 90)
    (group,) = prometheus.get("/api/v1/rules")["groups"]
    assert len(group["rules"]) == 9 and {rule["health"] for rule in group["rules"]} == {"ok"}


def test_metrics_prints_the_same_figures_once(outbox, capsys):
    capsys.readouterr()
    assert main(["--dsn", outbox.dsn, "metrics", "--window", WINDOW]) == 0
    families = {family.name: family for family in text_string_to_metric_families(capsys.readouterr().out)}
    events = {s.labels["status"]: s.value for s in families["secure_webhooks_events"].samples}
    assert events == EXPECTED_EVENTS
    attempts = {s.labels["outcome"]: s.value for s in families["secure_webhooks_recent_attempts"].samples}
    assert attempts == EXPECTED_ATTEMPTS
    buckets = families["secure_webhooks_recent_delivery_latency_seconds"].samples
    assert {s.labels["le"]: s.value for s in buckets if s.name.endswith("_bucket")} == outbox.delivery_latencies()
    assert alert_counts(families) == EXPECTED_ALERTS
    (failed,) = families["secure_webhooks_alert_last_failed_timestamp_seconds"].samples
    assert failed.labels == {"kind": "events.dead"}
    assert failed.value == pytest.approx(outbox.alert_failed_at.timestamp(), abs=1e-3)
    (stuck,) = families["secure_webhooks_alert_oldest_unposted_timestamp_seconds"].samples
    assert stuck.labels == {"kind": "endpoint.paused"}
    assert stuck.value == pytest.approx(outbox.alert_stuck_since.timestamp(), abs=1e-3)


def alert_counts(families: dict[str, Any]) -> dict[tuple[str, str], float]:
    return {(s.labels["kind"], s.labels["state"]): s.value for s in families["secure_webhooks_alerts"].samples}


def test_promtool_accepts_the_exposition(exporter):
    checked = subprocess.run(
        ["promtool", "check", "metrics"], input=scrape(exporter), capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0 and not checked.stdout.strip(), checked.stdout + checked.stderr


def test_serve_metrics_answers_only_on_its_path(exporter):
    with pytest.raises(urllib.error.HTTPError) as missing:
        scrape(exporter.replace("/metrics", "/"))
    assert missing.value.code == 404 and "/metrics" in missing.value.read().decode()


def sessions(conn: psycopg.Connection) -> set[int]:
    """The backends of serve-metrics processes, by the application_name they set."""
    query = "SELECT pid FROM pg_stat_activity WHERE application_name = %s"
    return {pid for (pid,) in conn.execute(query, (APPLICATION_NAME,)).fetchall()}


def test_a_lost_connection_is_reported_then_reopened(outbox):
    """The scrape after the session is killed says database_up 0; the next one reconnects. An exporter of its
    own, so that no Prometheus scrape comes between the two."""
    others = sessions(outbox.conn)
    with serving(outbox.dsn) as exporter:  # named and connected before it listens
        (pid,) = sessions(outbox.conn) - others
        assert outbox.conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]
        assert "secure_webhooks_database_up 0.0" in scrape(exporter)
        assert "secure_webhooks_database_up 1.0" in scrape(exporter)


def test_serve_metrics_listens_on_ipv6_loopback(outbox):
    with serving(outbox.dsn, "[::1]:0") as exporter:
        assert exporter.startswith("http://[::1]:") and "secure_webhooks_database_up 1.0" in scrape(exporter)


@pytest.mark.parametrize("listen", ["0.0.0.0:9187", "[::]:9187", "192.0.2.1:9187"])
def test_serve_metrics_refuses_a_non_loopback_address_before_binding(capsys, listen):
    """Refused before any socket or connection is made (the DSN points nowhere)."""
    code = main(["--dsn", "host=127.0.0.1 port=1 connect_timeout=1", "serve-metrics", "--listen", listen])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: refusing to serve metrics on ") and "--allow-non-loopback" in err


@pytest.mark.parametrize("listen", ["localhost", "example.com:9187", "127.0.0.1:99999", ":9187"])
def test_a_listen_address_must_be_an_ip_and_port(capsys, listen):
    with pytest.raises(SystemExit) as exit_:
        main(["serve-metrics", "--listen", listen])
    assert exit_.value.code == 2 and "is not HOST:PORT with an IP address" in capsys.readouterr().err


def test_service_role_reads_them_too(outbox, cluster, capsys):
    """The role docs/metrics.md offers besides postgres: it may read the outbox's tables."""
    dsn = f"{cluster.dsn('authenticator')} options='-c role=service_role'"
    capsys.readouterr()
    code = main(["--dsn", dsn, "metrics"])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    families = {family.name: family for family in text_string_to_metric_families(out)}
    assert {s.labels["status"]: s.value for s in families["secure_webhooks_events"].samples} == EXPECTED_EVENTS
    assert alert_counts(families) == EXPECTED_ALERTS  # service_role may read the alerts table
    readable = families["secure_webhooks_reconciler_job_readable"].samples[0].value
    print(f"\nservice_role may read pg_cron's tables: {bool(readable)}")

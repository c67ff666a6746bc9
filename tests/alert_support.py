"""Alert test helpers: the alert URL kept in Vault as the stack keeps it, and reconciler rounds driven until
alerts reach a state. Shared by the alerts' own tests and the metrics' tests, which report the alerts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
from outbox_support import reconcile
from providers import OWNER, configured
from waiting import eventually

from local_supabase.cluster import LocalSupabase
from local_supabase.pg_net_worker import PgNetWorker
from secure_webhooks.delivery.alerts import ALERT_URL_SECRET, DONE_STATES
from secure_webhooks.signing.vault_secret_provider import VaultSecretProvider

#: What makes a Slack incoming-webhook URL a credential: its path.
SLACK_PATH = "/services/T0TEST/B0TEST/alertsSecretToken9f8e7d"


def keep_alert_url(cluster: LocalSupabase, url: str) -> tuple[VaultSecretProvider, Any]:
    """The alert URL in Vault, as the stack keeps it (the provider the component uses)."""
    provider = configured(VaultSecretProvider, cluster)
    props = {"name": ALERT_URL_SECRET, "secret": url, "owner": OWNER, "kind": "alert_url"}
    props["setting"] = "delivery.alertUrl"
    assert not provider.check({}, props).failures
    return provider, provider.create(props)


def run_rounds(conn: psycopg.Connection, worker: PgNetWorker, done: Callable[[], bool], what: str) -> None:
    """Rounds (and pg_net's sending) until `done()`."""

    def round_done() -> bool:
        reconcile(conn)
        worker.drain()
        return done()

    eventually(round_done, what, timeout=60)


def alert_rows(conn: psycopg.Connection) -> list[tuple[str, str, int]]:
    return conn.execute("SELECT kind, state, attempts FROM secure_webhooks.alerts ORDER BY id").fetchall()


def retry_until_failed(conn: psycopg.Connection, worker: PgNetWorker) -> None:
    """Rounds until every alert is done, each retry made due at once: the backoff's waits (10 s, 30 s, 90 s,
    270 s) are skipped, the attempts are real. For an alert URL that keeps failing."""

    def all_done() -> bool:
        conn.execute("UPDATE secure_webhooks.alerts SET next_attempt_at = now() WHERE state = 'pending'")
        return all(state in DONE_STATES for _, state, _ in alert_rows(conn))

    run_rounds(conn, worker, all_done, "every alert to be done")

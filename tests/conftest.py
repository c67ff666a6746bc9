"""Shared fixtures: one local Supabase-like cluster per session, plus worker and receiver."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from outbox_support import LIVE, remove_left_behind

from local_supabase.cluster import LocalSupabase
from local_supabase.orchestrator import WebhookReceiver
from local_supabase.pg_net_worker import PgNetWorker

# HS256 secret of ``webhook_receiver``; 80 bytes, long enough for HS384/HS512 too.
RECEIVER_SECRET = "local-test-signing-secret-" + "0123456789abcdef" * 3 + "012345"


@pytest.fixture(autouse=True)
def _no_pipeline_left_behind() -> Iterator[None]:
    """A test that fails before removing its pipeline must not leave triggers and a schema to the next test."""
    before = list(LIVE)
    yield
    remove_left_behind(before)


@pytest.fixture(scope="session")
def local_supabase() -> Iterator[LocalSupabase]:
    """The session's cluster: pgjwt and Vault preinstalled, pg_net not (as on Supabase)."""
    with LocalSupabase.start() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def pg_net_worker(local_supabase: LocalSupabase) -> Iterator[PgNetWorker]:
    """Delivers net.http_request_queue for the whole session; waits while pg_net is absent."""
    with PgNetWorker(local_supabase.admin_dsn) as worker:
        yield worker


@pytest.fixture
def admin_conn(local_supabase: LocalSupabase) -> Iterator[psycopg.Connection]:
    """Autocommit connection as the superuser supabase_admin."""
    with psycopg.connect(local_supabase.admin_dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
def postgres_conn(local_supabase: LocalSupabase) -> Iterator[psycopg.Connection]:
    """Autocommit connection as Supabase's non-superuser `postgres` (what Pulumi uses)."""
    with psycopg.connect(local_supabase.dsn("postgres"), autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="session")
def receiver_secret() -> str:
    """RECEIVER_SECRET as a fixture, for test modules that should not import conftest."""
    return RECEIVER_SECRET


@pytest.fixture
def webhook_receiver(receiver_secret: str) -> Iterator[WebhookReceiver]:
    """Orchestrator stand-in on 127.0.0.1 verifying tokens signed with ``receiver_secret``."""
    with WebhookReceiver(receiver_secret) as receiver:
        yield receiver


@pytest.fixture(scope="session")
def supabase_ready(local_supabase: LocalSupabase, receiver_secret: str) -> LocalSupabase:
    """The cluster as a Supabase project looks once our stack's prerequisites exist.

    pg_net is installed (the stack's Extension resource does that) and the Vault
    holds `app_jwt_secret` = receiver_secret, so the receiver verifies what the
    triggers sign.
    """
    with psycopg.connect(local_supabase.dsn("postgres"), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_net WITH SCHEMA extensions")
        if conn.execute("SELECT NOT EXISTS (SELECT FROM vault.secrets WHERE name = 'app_jwt_secret')").fetchone()[0]:
            conn.execute("SELECT vault.create_secret(%s, 'app_jwt_secret')", (receiver_secret,))
    return local_supabase


@pytest.fixture
def engine(tmp_path):
    """The real Pulumi engine, a fresh local cluster and a copy of the project (see engine_support)."""
    from engine_support import engine as start_engine

    with start_engine(tmp_path) as env:
        yield env

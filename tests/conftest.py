"""Shared fixtures: one local Supabase-like cluster per session, plus worker and receiver; and for the
outbox tests, one cluster per test module with that module's own signing secret."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from outbox_support import LIVE, Pipeline, install_pipeline, remove_left_behind, supabase_with_secret

from local_supabase.cluster import LocalSupabase
from local_supabase.orchestrator import WebhookReceiver
from local_supabase.pg_net_worker import PgNetWorker
from local_supabase.scripted_server import ScriptedServer

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


@pytest.fixture(scope="module")
def pg_net(local_supabase: LocalSupabase) -> None:
    """Install pg_net in the session's cluster the way the product does: as `postgres`, into schema extensions."""
    with psycopg.connect(local_supabase.dsn("postgres"), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_net WITH SCHEMA extensions")


@pytest.fixture
def endpoint() -> Iterator[ScriptedServer]:
    """A loopback server answering 200 to anything, recording what it received."""
    with ScriptedServer() as server:
        yield server


# The outbox tests' fixtures. Each module that uses them defines SECRET and gets a cluster of its own (module
# scope): a module's events, endpoints and Vault never meet another module's.


@pytest.fixture(scope="module")
def module_secret(request: pytest.FixtureRequest) -> str:
    """The test module's SECRET: its cluster's Vault signs with it, its receivers verify with it."""
    return request.module.SECRET


@pytest.fixture(scope="module")
def cluster(module_secret: str) -> Iterator[LocalSupabase]:
    """The module's own cluster, pg_net installed and the Vault holding `module_secret` as app_jwt_secret."""
    with supabase_with_secret(module_secret) as cluster:
        yield cluster


@pytest.fixture
def worker(cluster: LocalSupabase) -> Iterator[PgNetWorker]:
    """The stand-in pg_net worker sending what `cluster`'s pg_net queue holds."""
    with PgNetWorker(cluster.admin_dsn) as worker:
        yield worker


@pytest.fixture
def receiver(module_secret: str) -> Iterator[WebhookReceiver]:
    """An orchestrator stand-in verifying tokens signed with the module's secret."""
    with WebhookReceiver(module_secret) as receiver:
        yield receiver


@pytest.fixture
def pipeline(cluster: LocalSupabase) -> Iterator[Pipeline]:
    """The at-least-once pipeline (outbox, reconciler, function; no trigger yet) with tests' fast retries."""
    pipeline = install_pipeline(cluster)
    yield pipeline
    pipeline.remove()


@pytest.fixture
def conn(pipeline: Pipeline) -> Iterator[psycopg.Connection]:
    """An autocommit connection as `postgres` to the pipeline's cluster."""
    with pipeline.connect() as conn:
        yield conn

"""The stand-in's pg_net worker keeps upstream's pace (pg_net 0.20.x, src/worker.c).

While it has work the worker waits up to a second after each round (WORKER_WAIT_ONE_SECOND)
and takes at most ``pg_net.batch_size`` requests per round; a commit that queued a request
wakes it early only if it is the first since the worker last reset its wake flag. So a burst
arrives in rounds of ``batch_size`` about a second apart, a steady stream waits for the next
round, and a request after idle leaves within milliseconds. Bounds are generous (the machine
may be busy) but far from what a worker polling every 20 ms would give.

Arrivals are timestamped by a recording HTTP server on loopback. The tests use a cluster and a
worker of their own: a second worker on the same cluster would run rounds of its own.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Iterator

import psycopg
import pytest
from waiting import eventually

from local_supabase.cluster import LocalSupabase
from local_supabase.pg_net_worker import PgNetWorker
from local_supabase.scripted_server import Received, ScriptedServer

# "About a second" between rounds, allowing for a busy machine either way.
MIN_GAP, MAX_GAP = 0.5, 4.0


class TimedServer(ScriptedServer):
    """A ScriptedServer that also notes when (time.monotonic()) each request arrived."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[float, str]] = []
        super().__init__()

    def _record(self, record: Received) -> None:
        self.arrivals.append((time.monotonic(), record.path))
        super()._record(record)


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalSupabase]:
    with LocalSupabase.start(preinstall_pg_net=True, preinstall_pgjwt=False, preinstall_pg_cron=False) as own:
        yield own


@pytest.fixture
def worker(cluster: LocalSupabase) -> Iterator[PgNetWorker]:
    with PgNetWorker(cluster.admin_dsn) as own_worker:
        own_worker.wait_until_connected()
        yield own_worker


@pytest.fixture
def server() -> Iterator[TimedServer]:
    with TimedServer() as timed:
        yield timed


@pytest.fixture
def conn(cluster: LocalSupabase) -> Iterator[psycopg.Connection]:
    with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as own_conn:
        yield own_conn


def _wait_idle(worker: PgNetWorker, timeout: float = 15.0) -> None:
    """Until the worker sleeps with no timeout (a busy period ends a second after an empty round)."""
    deadline = time.monotonic() + timeout
    while not worker.idle:
        assert time.monotonic() < deadline, "the worker never went idle"
        time.sleep(0.01)


def _new_session_setting(cluster: LocalSupabase, name: str) -> str | None:
    with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
        return conn.execute("SELECT current_setting(%s, true)", (name,)).fetchone()[0]


def _burst(conn: psycopg.Connection, url: str, count: int) -> None:
    """``count`` requests committed at once, paths /0 .. /count-1."""
    conn.execute("SELECT net.http_post(%s || '/' || n) FROM generate_series(0, %s - 1) AS n", (url, count))


def _batches_arrive_apart(server: TimedServer, count: int, batch: int) -> list[float]:
    """Requests taken in id order, ``batch`` per round: every request of batch k arrives before
    any of batch k+1, at least MIN_GAP earlier. Returns the gaps between batches."""
    arrived = {int(path.lstrip("/")): at for at, path in server.arrivals}
    assert sorted(arrived) == list(range(count)), "every request arrives exactly once"
    gaps = []
    for start in range(0, count - batch, batch):
        this_round = [arrived[n] for n in range(start, start + batch)]
        next_round = [arrived[n] for n in range(start + batch, min(start + 2 * batch, count))]
        gaps.append(min(next_round) - max(this_round))
    assert all(MIN_GAP <= gap <= MAX_GAP for gap in gaps), gaps
    return gaps


def test_a_burst_arrives_in_rounds_of_batch_size_about_a_second_apart(conn, worker, server):
    _wait_idle(worker)
    _burst(conn, server.url, 1000)
    server.wait_for(1000, timeout=60)
    gaps = _batches_arrive_apart(server, 1000, 200)
    times = [at for at, _ in server.arrivals]
    rounded = [round(gap, 2) for gap in gaps]
    print(f"1,000 at once: gaps between rounds {rounded} s, {max(times) - min(times):.2f} s in all")
    assert len(gaps) == 4 and max(times) - min(times) >= 3.0
    worker.drain()


def test_pg_net_batch_size_is_read_every_round(cluster, conn, worker, server):
    with psycopg.connect(cluster.admin_dsn, autocommit=True) as admin:
        # PostgreSQL 15's ALTER SYSTEM only takes parameters this session knows; pg_net is not
        # preloaded here, so a SET creates the placeholder first.
        admin.execute("SET pg_net.batch_size = 50")
        admin.execute("ALTER SYSTEM SET pg_net.batch_size = 50")
        admin.execute("SELECT pg_reload_conf()")
        try:
            # pg_reload_conf() only signals the postmaster, which re-reads the files, then signals every session.
            # A session started after that has the new value, and the worker's session, signalled by then, applies
            # it before its next statement: without this wait its first round could still take 200.
            eventually(lambda: _new_session_setting(cluster, "pg_net.batch_size") == "50", "the reload", 30)
            _wait_idle(worker)
            _burst(conn, server.url, 150)
            server.wait_for(150, timeout=30)
            gaps = _batches_arrive_apart(server, 150, 50)
            print(f"batch_size 50: gaps between rounds {[round(gap, 2) for gap in gaps]} s")
            assert len(gaps) == 2
        finally:
            admin.execute("ALTER SYSTEM RESET pg_net.batch_size")
            admin.execute("SELECT pg_reload_conf()")
    worker.drain()


def test_a_request_after_idle_leaves_within_milliseconds(conn, worker, server):
    latencies = []
    for attempt in range(5):
        _wait_idle(worker)
        # Nothing waits on this: the commit then finds the worker asleep, not on its way there (a commit in
        # between would wake it at once all the same), so the figure is the wake-up's.
        time.sleep(0.05)
        conn.execute("SELECT net.http_post(%s)", (f"{server.url}/{attempt}",))
        committed = time.monotonic()
        server.wait_for(attempt + 1)
        latencies.append(server.arrivals[attempt][0] - committed)
    print(f"after idle: commit to arrival {[round(latency * 1000) for latency in latencies]} ms")
    assert statistics.median(latencies) < 0.5, latencies


def test_a_steady_stream_waits_for_the_next_round(conn, worker, server):
    """One request every 50 ms for 3 s: after the first two (the wake after idle, and the first
    commit after the worker reset its flag) they leave once a second, so on average about half
    a second after their commit, where polling every 20 ms would take about 20 ms."""
    _wait_idle(worker)
    committed = []
    for n in range(60):
        conn.execute("SELECT net.http_post(%s)", (f"{server.url}/{n}",))
        committed.append(time.monotonic())
        time.sleep(0.05)
    server.wait_for(60, timeout=30)
    arrived = {int(path.lstrip("/")): at for at, path in server.arrivals}
    latencies = [arrived[n] - committed[n] for n in range(60)]
    print(
        f"steady stream: commit to arrival p50 {statistics.median(latencies) * 1000:.0f} ms, "
        f"max {max(latencies) * 1000:.0f} ms"
    )
    assert 0.2 <= statistics.median(latencies) <= 1.5, latencies
    assert max(latencies) >= 0.6, latencies  # someone waited most of a round
    # Rounds: arrivals come in clusters at least MIN_GAP apart, about one a second. Counted against the seconds
    # the arrivals took, not the stream's nominal 3 s: on a busy machine the 60 commits take longer, and so
    # does every round, and a fixed bound would count the machine's speed.
    times = sorted(arrived.values())
    clusters = 1 + sum(1 for before, after in itertools.pairwise(times) if after - before >= MIN_GAP)
    assert 2 <= clusters <= times[-1] - times[0] + 2, (clusters, times[-1] - times[0], latencies)
    worker.drain()

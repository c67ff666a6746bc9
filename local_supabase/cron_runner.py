"""Runs a pg_cron job's own command back to back, as pg_cron >= 1.5 would with a 1-second schedule.

Supabase ships pg_cron 1.6; Debian's package is 1.4, which only schedules by
the minute, so after `pulumi up` its first run can be a minute away. Tests and
the demo start this runner so deliveries begin at once: it reads the job's
command from `cron.job` and executes it as the job's role, exactly the text
pg_cron runs. Real pg_cron keeps running the same job on its own clock as
well, which exercises two reconciler runs at once. One test waits for
pg_cron's own tick instead (tests/test_outbox_cron.py).
"""

from __future__ import annotations

import threading
from typing import Self

import psycopg


class JobSessionThread:
    """A thread that runs a cron job's command in its own session until stopped; `stop` cancels the
    run in progress (its finished rounds are committed), as stopping pg_cron would. Subclasses say
    when each run starts (`_run`) and record failed runs in `failures`."""

    thread_name = "cron"

    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self._stopping = threading.Event()
        self._conn: psycopg.Connection | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.failures: list[str] = []

    def start(self) -> Self:
        if self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Cancel the run in progress and stop."""
        self._stopping.set()
        with self._lock:
            if self._conn is not None and not self._conn.closed:
                self._conn.cancel_safe()
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _session(self, application_name: str) -> psycopg.Connection:
        """A new session whose run `stop` can cancel (use it as a context manager, then `_release`)."""
        conn = psycopg.connect(self._conninfo, autocommit=True, application_name=application_name)
        with self._lock:
            self._conn = conn
        return conn

    def _release(self) -> None:
        with self._lock:
            self._conn = None

    def _failed(self, error: psycopg.Error) -> None:
        """As with pg_cron, a failed run is recorded and the next one starts later."""
        if not self._stopping.is_set():
            self.failures.append(str(error).splitlines()[0] if str(error) else type(error).__name__)

    def _run(self) -> None:
        raise NotImplementedError


class CronJobRunner(JobSessionThread):
    """Execute the named job's command again whenever the previous run ends, until stopped."""

    def __init__(self, conninfo: str, job_name: str, *, poll_interval: float = 0.2) -> None:
        super().__init__(conninfo)
        self._job_name = job_name
        self._poll_interval = poll_interval
        self.thread_name = f"cron:{job_name}"

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                with self._session("pg_cron runner") as conn:
                    while not self._stopping.is_set():
                        row = conn.execute(
                            "SELECT command FROM cron.job WHERE jobname = %s AND active", (self._job_name,)
                        ).fetchone()
                        if row is None:
                            self._stopping.wait(self._poll_interval)
                            continue
                        conn.execute(row[0])
            except psycopg.Error as error:
                # The job's functions dropped mid-run, the server restarting, a cancel.
                self._failed(error)
                if not self._stopping.is_set():
                    self._stopping.wait(self._poll_interval)
            finally:
                self._release()

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

import psycopg


class CronJobRunner:
    """Execute the named job's command again whenever the previous run ends, until stopped."""

    def __init__(self, conninfo: str, job_name: str, *, poll_interval: float = 0.2) -> None:
        self._conninfo = conninfo
        self._job_name = job_name
        self._poll_interval = poll_interval
        self._stopping = threading.Event()
        self._conn: psycopg.Connection | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.failures: list[str] = []

    def start(self) -> CronJobRunner:
        if self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name=f"cron:{self._job_name}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Cancel the run in progress (its finished rounds are committed) and stop."""
        self._stopping.set()
        with self._lock:
            if self._conn is not None and not self._conn.closed:
                self._conn.cancel_safe()
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None

    def __enter__(self) -> CronJobRunner:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True, application_name="pg_cron runner") as conn:
                    with self._lock:
                        self._conn = conn
                    while not self._stopping.is_set():
                        row = conn.execute(
                            "SELECT command FROM cron.job WHERE jobname = %s AND active", (self._job_name,)
                        ).fetchone()
                        if row is None:
                            self._stopping.wait(self._poll_interval)
                            continue
                        conn.execute(row[0])
            except psycopg.Error as error:
                # The job's functions dropped mid-run, the server restarting, a cancel: as with
                # pg_cron, a failed run is recorded and the next one starts later.
                if not self._stopping.is_set():
                    self.failures.append(str(error).splitlines()[0] if str(error) else type(error).__name__)
                    self._stopping.wait(self._poll_interval)
            finally:
                with self._lock:
                    self._conn = None

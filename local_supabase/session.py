"""A local Supabase a developer can point a stack at by hand, delivering until it is stopped.

On Supabase, pg_net's worker runs inside the server and pg_cron 1.6 runs the reconciler every
second. Here the worker is a thread (``PgNetWorker``) and Debian's pg_cron 1.4 only ticks per
minute, so the reconciler's cadence is a thread too (``CronJobRunner``, as the demo and the
engine tests run it). Threads need a process that outlives ``start``: a background process
started in its own session runs them (and, if asked, a verifying receiver) until ``stop``. Its
pid, status and log live in the state directory beside the cluster's ``connection.json``, so
``status`` and ``stop`` work from any shell, and ``stop`` still stops the cluster when that
process died.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from .bootstrap import create_demo_tables
from .cluster import STATE_FILE_NAME, ClusterError, LocalSupabase
from .cron_runner import CronJobRunner
from .orchestrator import Delivery, WebhookReceiver
from .pg_net_worker import PgNetWorker

#: The product's reconciler job (its name in secure_webhooks; the status check shows it is found).
JOB_NAME = "secure_webhooks_reconciler"
PID_FILE = "session.pid"
STATUS_FILE = "session.json"
LOG_FILE = "session.log"
RECEIVER_LOG = "receiver.log"
JWT_SECRET_FILE = "jwt_secret"
PASSWORD_FILE = "postgres.password"
_SESSION_FILES = (STATUS_FILE, PID_FILE, LOG_FILE, RECEIVER_LOG, JWT_SECRET_FILE, PASSWORD_FILE, STATE_FILE_NAME)
#: Generous bounds on conditions, not guesses of how long they take: a busy machine only makes them slower.
READY_TIMEOUT = 120.0
STOP_TIMEOUT = 60.0
#: How often the background process refreshes its status file.
MONITOR_INTERVAL = 0.5

_log = logging.getLogger("local_supabase.session")


class SessionError(Exception):
    """A user error or a failed start, said in words: the CLI prints it without a traceback."""


@dataclass(frozen=True)
class SessionPaths:
    """The state directory's files; ``shown`` is the directory as the user typed it, for messages."""

    root: Path
    shown: Path

    @classmethod
    def of(cls, state_dir: Path) -> SessionPaths:
        return cls(root=state_dir.resolve(), shown=state_dir)

    def __getitem__(self, name: str) -> Path:
        return self.root / name

    def show(self, name: str) -> str:
        return str(self.shown / name)


def _write_private(path: Path, text: str) -> None:
    """0600 from the first byte: these files hold passwords and the signing key."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(text)


def _write_status(paths: SessionPaths, status: Mapping[str, Any]) -> None:
    """Atomically, so ``status`` in another shell never reads half a file."""
    temporary = paths[STATUS_FILE + ".tmp"]
    _write_private(temporary, json.dumps(status, indent=2) + "\n")
    os.replace(temporary, paths[STATUS_FILE])


def read_status(paths: SessionPaths) -> dict[str, Any]:
    """What the background process last said about itself; empty before it said anything."""
    try:
        return json.loads(paths[STATUS_FILE].read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _ours(pid: int, paths: SessionPaths) -> bool:
    """Whether ``pid`` is this directory's background process, still running.

    The command line is checked because a pid is reused once its process is gone; a zombie (its
    parent exited and nobody reaped it) has an empty command line and so counts as gone.
    """
    try:
        arguments = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"local_supabase" in arguments and b"serve" in arguments and str(paths.root).encode() in arguments


def background_pid(paths: SessionPaths) -> int | None:
    """The background process's pid while it runs, else None."""
    try:
        pid = int(paths[PID_FILE].read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return None
    return pid if _ours(pid, paths) else None


def _cluster(paths: SessionPaths) -> LocalSupabase:
    try:
        return LocalSupabase.from_state(paths.root)
    except (OSError, ValueError, KeyError) as error:
        raise SessionError(f"{paths.show(STATE_FILE_NAME)} is unreadable ({error!r}): remove it by hand") from None


def _log_tail(paths: SessionPaths, lines: int = 15) -> str:
    try:
        return "\n".join(paths[LOG_FILE].read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# start -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StartOptions:
    settings: Mapping[str, str]
    example_tables: bool = False
    receiver_port: int | None = None
    preinstall_pg_net: bool = True
    preinstall_pgjwt: bool = True
    preinstall_pg_cron: bool = True


def start(state_dir: Path, options: StartOptions) -> str:
    """Start the cluster and the background process; return what to tell the user.

    Anything that fails on the way stops what was started, so a failed start leaves nothing.
    """
    paths = SessionPaths.of(state_dir)
    if paths[STATE_FILE_NAME].exists() or background_pid(paths) is not None:
        raise SessionError(
            f"{paths.shown} already holds a local Supabase: see `python -m local_supabase status --state-dir "
            f"{paths.shown}`, or stop it first with `python -m local_supabase stop --state-dir {paths.shown}`"
        )
    paths.root.mkdir(parents=True, exist_ok=True)
    for name in _SESSION_FILES:  # left by a background process that died after its cluster was stopped
        paths[name].unlink(missing_ok=True)
    try:
        cluster = LocalSupabase.start(
            settings=options.settings,
            preinstall_pgjwt=options.preinstall_pgjwt,
            preinstall_pg_net=options.preinstall_pg_net,
            preinstall_pg_cron=options.preinstall_pg_cron,
            stop_at_exit=False,
        )
    except ClusterError as error:
        raise SessionError(f"the cluster did not start: {error}") from None
    process: subprocess.Popen[bytes] | None = None
    try:
        cluster.write_state(paths.root)
        _write_private(paths[PASSWORD_FILE], cluster.password_for("postgres"))
        if options.example_tables:
            with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
                create_demo_tables(conn)
        if options.receiver_port is not None:
            _write_private(paths[JWT_SECRET_FILE], secrets.token_urlsafe(48))
        process = _spawn_background(paths, options.receiver_port)
        status = _wait_until_ready(paths, process)
    except BaseException:
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        cluster.stop()
        for name in _SESSION_FILES:
            if name != LOG_FILE:  # kept: it says why
                paths[name].unlink(missing_ok=True)
        raise
    return _started_message(paths, cluster, status, options)


def _spawn_background(paths: SessionPaths, receiver_port: int | None) -> subprocess.Popen[bytes]:
    """``serve`` in a new session (no terminal's signals reach it), output into the log file.

    It runs from the directory holding this package, which is how ``python -m local_supabase``
    finds it, whatever directory ``start`` ran in.
    """
    command = [sys.executable, "-m", "local_supabase", "serve", "--state-dir", str(paths.root)]
    if receiver_port is not None:
        command += ["--receiver", str(receiver_port)]
    with open(paths[LOG_FILE], "ab") as log:
        process = subprocess.Popen(
            command,
            cwd=Path(__file__).resolve().parent.parent,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return process


def _wait_until_ready(paths: SessionPaths, process: subprocess.Popen[bytes]) -> dict[str, Any]:
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        status = read_status(paths)
        if status.get("state") == "ready":
            return status
        if status.get("state") == "failed" or process.poll() is not None:
            reason = status.get("error") or f"it exited with {process.poll()}:\n{_log_tail(paths)}"
            raise SessionError(f"the background process (pg_net's worker, the reconciler's cadence) failed: {reason}")
        if time.monotonic() > deadline:
            raise SessionError(f"the background process was not ready in {READY_TIMEOUT:.0f} s:\n{_log_tail(paths)}")
        time.sleep(0.1)


def config_commands(paths: SessionPaths, port: int, receiver_url: str | None) -> list[str]:
    """The commands that point a Pulumi stack at this cluster; secrets go on stdin, never in arguments."""
    plain = {
        "secure-webhooks:orchestratorUrl": receiver_url or "<your orchestrator's URL>",
        "secure-webhooks:manageExtensions": "false",
        "postgresql:host": "127.0.0.1",
        "postgresql:port": str(port),
        "postgresql:sslmode": "disable",
        "postgresql:superuser": "false",
    }
    commands = [
        "pulumi config set-all " + " ".join(f"--plaintext {key}={value}" for key, value in plain.items()),
        f"pulumi config set --secret postgresql:password < {paths.show(PASSWORD_FILE)}",
    ]
    if receiver_url is not None:
        commands.append(f"pulumi config set --secret secure-webhooks:jwtSecret < {paths.show(JWT_SECRET_FILE)}")
    return commands


def _started_message(
    paths: SessionPaths, cluster: LocalSupabase, status: Mapping[str, Any], options: StartOptions
) -> str:
    receiver_url = status.get("receiver_url")
    lines = [
        f"Local Supabase running (state in {paths.shown}):",
        f"  database       {_uri(cluster.host, cluster.port)}  (password in {paths.show(PASSWORD_FILE)})",
        f"  pg_net worker and reconciler cadence: background process {status['pid']}, log {paths.show(LOG_FILE)}",
    ]
    if options.example_tables:
        lines.append("  tables         public.resumes, public.zip_archives")
    if receiver_url is not None:
        lines.append(
            f"  receiver       {receiver_url}  verifies tokens signed with {paths.show(JWT_SECRET_FILE)}; "
            f"deliveries in {paths.show(RECEIVER_LOG)}"
        )
    lines.append("Point a stack at it (in the project directory, pulumi on PATH, after `pulumi stack init`):")
    lines += [f"  {command}" for command in config_commands(paths, cluster.port, receiver_url)]
    lines.append(f"Then `pulumi up`; `python -m local_supabase stop --state-dir {paths.shown}` ends it all.")
    return "\n".join(lines)


def _uri(host: str, port: int) -> str:
    return f"postgresql://postgres@{host}:{port}/postgres"


# the background process --------------------------------------------------------------------------


class _LoggingReceiver(WebhookReceiver):
    """The test receiver, also writing one line per request to a file a developer can ``tail -f``."""

    def __init__(self, secret: str, port: int, log_path: Path) -> None:
        super().__init__(secret, port=port)
        self._log_path = log_path
        self.accepted = 0
        self.rejected = 0

    def _record(self, record: Delivery) -> None:
        with self._arrived:  # one request at a time: counts and log lines stay in step
            super()._record(record)
            if record.status == 200:
                self.accepted += 1
            else:
                self.rejected += 1
            with open(self._log_path, "a", encoding="utf-8") as log:
                log.write(describe_delivery(record) + "\n")


def describe_delivery(delivery: Delivery) -> str:
    """One line: when, the verdict, where, and which row of which table."""
    body = delivery.body if isinstance(delivery.body, dict) else {}
    record = body.get("record") if isinstance(body.get("record"), dict) else {}
    row = f"{body.get('type')} {body.get('schema')}.{body.get('table')} id={record.get('id')}"
    when = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if delivery.claims is not None:
        claims = delivery.claims
        token = f"token ok: role={claims.get('role')} lifetime={claims['exp'] - claims['iat']}s jti={claims.get('jti')}"
        verdict = "duplicate" if delivery.duplicate else "accepted"
        return f"{when} {delivery.status} {verdict} POST {delivery.path} {row} {token}"
    return f"{when} {delivery.status} rejected POST {delivery.path} {row}: {delivery.rejection}"


def serve(state_dir: Path, receiver_port: int | None) -> int:
    """Run pg_net's worker, the reconciler's cadence and the receiver until SIGTERM; the process ``start`` leaves.

    It reports through the status file: ``starting``, then ``ready`` or ``failed`` with the reason,
    then refreshed while it runs. A worker that dies ends the process (the log says why), so a
    live process means a live worker.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    paths = SessionPaths.of(state_dir)
    stopping = threading.Event()
    for signal_number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signal_number, lambda *_: stopping.set())
    paths[PID_FILE].write_text(f"{os.getpid()}\n", encoding="utf-8")
    status: dict[str, Any] = {"pid": os.getpid(), "state": "starting", "job": JOB_NAME}
    _write_status(paths, status)
    with ExitStack() as running:
        try:
            facts = json.loads(paths[STATE_FILE_NAME].read_text(encoding="utf-8"))
            receiver = None
            if receiver_port is not None:
                secret = paths[JWT_SECRET_FILE].read_text(encoding="utf-8")
                receiver = running.enter_context(_LoggingReceiver(secret, receiver_port, paths[RECEIVER_LOG]))
                status["receiver_url"] = receiver.url
            worker = running.enter_context(PgNetWorker(facts["admin_dsn"]))
            worker.wait_until_connected(READY_TIMEOUT)
            runner = running.enter_context(CronJobRunner(facts["dsn"]["postgres"], JOB_NAME))
        except (OSError, ValueError, KeyError, RuntimeError, TimeoutError) as error:
            _log.error("could not start: %s", error)
            _write_status(paths, {**status, "state": "failed", "error": f"{type(error).__name__}: {error}"})
            return 1
        _log.info("ready: pg_net worker connected, running job %s back to back", JOB_NAME)
        status.update(state="ready", worker="connected", runner_failures=0, last_runner_failure=None)
        code = _monitor(paths, status, worker, runner, receiver, stopping)
    _log.info("stopped")
    return code


def _monitor(
    paths: SessionPaths,
    status: dict[str, Any],
    worker: PgNetWorker,
    runner: CronJobRunner,
    receiver: _LoggingReceiver | None,
    stopping: threading.Event,
) -> int:
    """Refresh the status file until asked to stop; log each new kind of reconciler failure once."""
    written: dict[str, Any] = {}
    while True:
        try:
            worker.wait_until_connected(0)
            status["worker"] = "connected"
        except TimeoutError:
            status["worker"] = "reconnecting (the database is unreachable)"
        except RuntimeError as error:
            _log.error("pg_net worker died: %s", error.__cause__ or error)
            _write_status(paths, {**status, "state": "failed", "error": f"pg_net worker died: {error.__cause__}"})
            return 1
        # Taken off the runner's list so a job failing for days does not grow it without bound.
        failures = runner.failures[:]
        del runner.failures[: len(failures)]
        for failure in failures:
            if failure != status["last_runner_failure"]:
                _log.warning("reconciler run failed: %s", failure)
            status["last_runner_failure"] = failure
        status["runner_failures"] += len(failures)
        if receiver is not None:
            status.update(accepted=receiver.accepted, rejected=receiver.rejected)
        if status != written:
            _write_status(paths, status)
            written = dict(status)
        if stopping.wait(MONITOR_INTERVAL):
            _log.info("stopping")
            paths[STATUS_FILE].unlink(missing_ok=True)
            return 0


# status and stop ---------------------------------------------------------------------------------


def status_report(state_dir: Path) -> tuple[str, bool]:
    """What runs, in words, and whether everything does."""
    paths = SessionPaths.of(state_dir)
    if not paths[STATE_FILE_NAME].exists():
        return f"no local Supabase in {paths.shown} (start one with `python -m local_supabase start`)", False
    cluster = _cluster(paths)
    lines = [f"database:        {_uri(cluster.host, cluster.port)}  (password in {paths.show(PASSWORD_FILE)})"]
    job: tuple[bool, str] | None = None
    try:
        with psycopg.connect(cluster.dsn("postgres"), connect_timeout=5, autocommit=True) as conn:
            version = conn.execute("SHOW server_version").fetchone()
            job = conn.execute("SELECT active, schedule FROM cron.job WHERE jobname = %s", (JOB_NAME,)).fetchone()
        cluster_up = True
        lines.append(f"cluster:         up (PostgreSQL {version[0] if version else '?'})")
    except psycopg.Error as error:
        cluster_up = False
        lines.append(f"cluster:         DOWN: {str(error).strip().splitlines()[0] if str(error) else error!r}")
    pid = background_pid(paths)
    state = read_status(paths) if pid is not None else {}
    background_up = pid is not None and state.get("state") == "ready"
    if background_up:
        lines.append(f"pg_net worker:   running, {state.get('worker')} (background process {pid})")
        failures = state.get("runner_failures") or 0
        failed = f", {failures} failed runs, last: {state.get('last_runner_failure')}" if failures else ""
        lines.append(f"reconciler:      running job {JOB_NAME} back to back{failed}")
    else:
        reason = read_status(paths).get("error")
        lines.append(
            f"pg_net worker:   NOT RUNNING: the background process is gone"
            f"{f' ({reason})' if reason else ''} (log: {paths.show(LOG_FILE)})"
        )
        lines.append("reconciler:      NOT RUNNING (same process); `stop`, then `start` again")
    if job is None:
        lines.append(f"job:             {JOB_NAME} not scheduled (yet): `pulumi up` of a stack schedules it")
    else:
        lines.append(f"job:             {JOB_NAME} scheduled '{job[1]}'{'' if job[0] else ', PAUSED'}")
    if state.get("receiver_url"):
        lines.append(
            f"receiver:        {state['receiver_url']}: {state.get('accepted', 0)} accepted, "
            f"{state.get('rejected', 0)} rejected (each in {paths.show(RECEIVER_LOG)})"
        )
    return "\n".join(lines), cluster_up and background_up


def stop(state_dir: Path) -> str:
    """End the background process, then the cluster, and delete the session's files."""
    paths = SessionPaths.of(state_dir)
    if not paths[STATE_FILE_NAME].exists() and not paths[PID_FILE].exists():
        raise SessionError(f"no local Supabase in {paths.shown}: nothing to stop")
    notes = []
    pid = background_pid(paths)
    if pid is not None:
        _end_process(pid, paths)
        notes.append(f"stopped the background process {pid}")
    elif paths[PID_FILE].exists():
        notes.append(f"the background process had already exited; its log ended with:\n{_log_tail(paths)}")
    if paths[STATE_FILE_NAME].exists():
        cluster = _cluster(paths)
        try:
            cluster.stop()
        except ClusterError as error:
            raise SessionError(f"the cluster did not stop: {error}") from None
        notes.append(f"stopped the cluster on port {cluster.port} and deleted its data")
    for name in _SESSION_FILES:
        paths[name].unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # the user keeps other files there
        paths.root.rmdir()
    return "\n".join(notes)


def _end_process(pid: int, paths: SessionPaths) -> None:
    """SIGTERM (its threads finish their round), SIGKILL if it does not exit in time."""
    for signal_number in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, signal_number)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + STOP_TIMEOUT
        while _ours(pid, paths):
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        else:
            return
    raise SessionError(f"background process {pid} did not exit after SIGKILL")


def run_sql(state_dir: Path, statements: str, role: str) -> str:
    """Run SQL as a login role and say what it returned, so a session needs no psql and no password typed."""
    paths = SessionPaths.of(state_dir)
    if not paths[STATE_FILE_NAME].exists():
        raise SessionError(f"no local Supabase in {paths.shown}")
    cluster = _cluster(paths)
    try:
        conninfo = cluster.dsn(role)
    except KeyError as error:
        raise SessionError(str(error.args[0])) from None
    try:
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as conn:
            cursor = conn.execute(statements)
            if cursor.description is None:
                return cursor.statusmessage or ""
            header = "\t".join(column.name for column in cursor.description)
            rows = ("\t".join("" if value is None else str(value) for value in row) for row in cursor.fetchall())
            return "\n".join([header, *rows])
    except psycopg.Error as error:
        raise SessionError(str(error).strip() or type(error).__name__) from None

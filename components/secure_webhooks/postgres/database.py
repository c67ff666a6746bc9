"""How our dynamic providers reach PostgreSQL.

They read the same `postgresql:*` stack config as pulumi-postgresql (falling
back to libpq's PG* environment variables), so one set of settings serves every
resource and the password never becomes a resource input, so it never lands in
the Pulumi state.
"""

from __future__ import annotations

import functools
import os
import socket
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg
from pulumi.dynamic import CheckFailure, CheckResult, ConfigureRequest, ResourceProvider

#: DDL on a busy table waits for its lock while new inserts queue behind it; a
#: short lock timeout makes `pulumi up` fail fast instead of stalling the app.
LOCK_TIMEOUT = "5s"
APPLICATION_NAME = "secure-webhooks (pulumi)"
#: How often the provider process checks that the engine that started it is still there.
ENGINE_POLL_SECONDS = 1.0


class DatabaseError(ConnectionError):
    """The database could not be reached or did not let us finish: one clear line, never a secret.

    In `check` it becomes a plain check failure; from a create, update, read or
    delete the engine shows it as one line too (see one_line_errors).
    """


def one_line(text: str) -> str:
    """libpq's messages span lines (a DETAIL, a HINT after a tab): join them for a one-line error."""
    return "; ".join(part.strip() for part in str(text).splitlines() if part.strip())


class ConfigSource(Protocol):
    def get(self, key: str) -> Any: ...


@dataclass(frozen=True)
class ConnectionSettings:
    host: str | None = None
    port: int | None = None
    database: str = "postgres"
    username: str = "postgres"
    password: str | None = field(default=None, repr=False)
    sslmode: str | None = None

    @classmethod
    def from_config(cls, config: ConfigSource) -> ConnectionSettings:
        port = config.get("postgresql:port")
        return cls(
            host=config.get("postgresql:host"),
            port=int(port) if port not in (None, "") else None,
            database=config.get("postgresql:database") or "postgres",
            username=config.get("postgresql:username") or "postgres",
            password=config.get("postgresql:password"),
            sslmode=config.get("postgresql:sslmode"),
        )

    def describe(self) -> str:
        """Where we connect, for error messages: never includes the password."""
        return f"{self.username}@{self.host or '(PGHOST)'}:{self.port or '(PGPORT)'}/{self.database}"

    def connect(self) -> psycopg.Connection:
        params: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "dbname": self.database,
            "user": self.username,
            "password": self.password,
            "sslmode": self.sslmode,
        }
        try:
            return psycopg.connect(
                **{k: v for k, v in params.items() if v is not None},
                application_name=APPLICATION_NAME,
                # search_path=pg_catalog makes pg_get_triggerdef/functiondef qualify every
                # name, so a recorded legacy definition restores the same objects anywhere.
                options=f"-c lock_timeout={LOCK_TIMEOUT} -c search_path=pg_catalog",
                connect_timeout=10,
            )
        except psycopg.OperationalError as exc:
            raise DatabaseError(
                f"cannot connect to PostgreSQL as {self.describe()}: {self.redact(one_line(exc))}"
            ) from None

    def redact(self, text: str) -> str:
        """`text` with the password masked, for messages built from driver errors."""
        return text.replace(self.password, "***") if self.password else text


class EngineGone(DatabaseError):
    """The Pulumi CLI that started this provider has died; the change is rolled back, not committed."""


def engine_address() -> tuple[str, int] | None:
    """(host, port) of the engine when this process is Pulumi's dynamic-provider server, else None.

    The engine starts `python -m pulumi.dynamic` with its own gRPC address as the last argument.
    """
    main = sys.modules.get("__main__")
    if getattr(getattr(main, "__spec__", None), "name", None) != "pulumi.dynamic.__main__" or len(sys.argv) < 2:
        return None
    host, _, port = sys.argv[-1].rpartition(":")
    return (host.strip("[]"), int(port)) if port.isdigit() and host else None


def engine_alive(address: tuple[str, int]) -> bool:
    """False once nothing listens at the engine's address: the CLI is gone (e.g. killed with SIGKILL)."""
    try:
        socket.create_connection(address, timeout=2).close()
    except ConnectionRefusedError:
        return False
    except OSError:
        return True  # a slow answer is not a dead engine
    return True


#: Every Database of this process, so a dead engine's watchdog can cancel what they are running.
_DATABASES: weakref.WeakSet[Database] = weakref.WeakSet()
_watchdog_started = threading.Lock()


#: Set to 1 to see the providers' Python tracebacks (for debugging them) instead of one line.
TRACEBACKS_ENV = "SECURE_WEBHOOKS_TRACEBACKS"


def one_line_errors() -> None:
    """In the dynamic-provider server, report a failure as its message alone.

    The server answers a failed create, read, update or delete with traceback.format_exc()
    (`_abort_with_traceback`), burying our one-line message under a page of provider frames.
    format_exc honours sys.tracebacklimit, so the server process gets a limit of 0: the engine
    shows `<error type>: <message>`. Nothing changes in any other process (tests, programs).
    """
    if engine_address() is not None and os.environ.get(TRACEBACKS_ENV) != "1":
        sys.tracebacklimit = 0


def watch_engine() -> None:
    """Exit this provider process once its engine is gone, cancelling any statement in flight first.

    Pulumi's Python dynamic-provider server never exits on its own, so a CLI killed while
    we wait for a table lock would leave an orphan (ppid 1) that still holds its place in
    the lock queue and commits the change later. Started once per process, by `configure`.
    """
    address = engine_address()
    if address is None or not _watchdog_started.acquire(blocking=False):
        return

    def watch() -> None:
        # Nothing is logged: stderr was a pipe to the dead CLI (writing to it would raise).
        try:
            while engine_alive(address):
                time.sleep(ENGINE_POLL_SECONDS)
            for database in list(_DATABASES):
                database.cancel()
        finally:
            os._exit(1)

    threading.Thread(target=watch, name="secure-webhooks-engine-watchdog", daemon=True).start()


class Database:
    """One connection per provider process, shared by the engine's parallel calls.

    The engine calls a provider from several threads; serialising them over one
    connection keeps a 100-webhook `up` at one connection (no reconnect storm)
    and keeps DDL on the same tables from contending with itself.
    """

    def __init__(self, settings: ConnectionSettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._conn: psycopg.Connection | None = None
        self._engine = engine_address()
        _DATABASES.add(self)

    def cancel(self) -> None:
        """Cancel the statement running on our connection, if any (safe from another thread)."""
        conn = self._conn
        if conn is not None and not conn.closed:
            conn.cancel_safe(timeout=5)

    @contextmanager
    def transaction(self, purpose: str | None = None) -> Iterator[psycopg.Cursor]:
        """A cursor inside one transaction: everything in it commits or nothing does.

        `purpose` ("create trigger x on public.t") names the change in the one-line
        DatabaseError raised when a lock timeout or a lost connection stops it.
        """
        with self._lock:
            if self._conn is None or self._conn.closed or self._conn.broken:
                self._conn = self.settings.connect()
            where = self.settings.describe()
            try:
                with self._conn.transaction(), self._conn.cursor() as cur:
                    yield cur
                    # A change the CLI can no longer record must not commit (it would leave the
                    # state behind the database); the watchdog then ends this process.
                    if self._engine is not None and not engine_alive(self._engine):
                        raise EngineGone(f"{purpose or 'a change'} rolled back: the Pulumi engine is gone")
            except psycopg.errors.LockNotAvailable:
                raise DatabaseError(
                    f"{purpose or 'a change'} timed out after lock_timeout {LOCK_TIMEOUT} waiting for a lock "
                    f"that another session holds (PostgreSQL {where}); nothing was changed. Retry once that "
                    "session's transaction has ended (pg_stat_activity shows it)."
                ) from None
            except psycopg.OperationalError as exc:
                if not self._conn.broken:
                    raise
                raise DatabaseError(
                    f"{purpose or 'a change'} failed: lost the connection to PostgreSQL {where} "
                    f"({self.settings.redact(one_line(exc))}); if it was committing, check the "
                    "object and run `pulumi refresh`, then retry."
                ) from None


class DatabaseProvider(ResourceProvider):
    """Base of our dynamic providers: connection settings come from `configure`.

    Instances carry no state when pickled into the Pulumi state (configure runs
    after unpickling), so the serialized provider never changes when settings
    or code change.
    """

    db: Database

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A database that cannot be reached in `check` is a check failure (one line), not a traceback."""
        super().__init_subclass__(**kwargs)
        if "check" in cls.__dict__:
            cls.check = _reporting_database_errors(cls.__dict__["check"])  # type: ignore[method-assign]

    def configure(self, req: ConfigureRequest) -> None:
        self.db = Database(ConnectionSettings.from_config(req.config))
        watch_engine()
        one_line_errors()


def _reporting_database_errors(
    check: Callable[[Any, dict[str, Any], dict[str, Any]], CheckResult],
) -> Callable[[Any, dict[str, Any], dict[str, Any]], CheckResult]:
    @functools.wraps(check)
    def wrapper(self: Any, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        try:
            return check(self, olds, news)
        except DatabaseError as exc:
            return CheckResult(news, [CheckFailure("", str(exc))])

    return wrapper

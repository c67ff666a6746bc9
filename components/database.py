"""How our dynamic providers reach PostgreSQL.

They read the same `postgresql:*` stack config as pulumi-postgresql (falling
back to libpq's PG* environment variables), so one set of settings serves every
resource and the password never becomes a resource input, so it never lands in
the Pulumi state.
"""

from __future__ import annotations

import functools
import threading
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


class DatabaseError(ConnectionError):
    """The database could not be reached or did not let us finish: one clear line, never a secret.

    Pulumi's dynamic-provider server still prints a traceback above it for a
    create, update, read or delete (`_abort_with_traceback`); the message is
    the traceback's last line. In `check` it becomes a plain check failure.
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

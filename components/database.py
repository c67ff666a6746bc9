"""How our dynamic providers reach PostgreSQL.

They read the same `postgresql:*` stack config as pulumi-postgresql (falling
back to libpq's PG* environment variables), so one set of settings serves every
resource and the password never becomes a resource input, so it never lands in
the Pulumi state.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg
from pulumi.dynamic import ConfigureRequest, ResourceProvider

#: DDL on a busy table waits for its lock while new inserts queue behind it; a
#: short lock timeout makes `pulumi up` fail fast instead of stalling the app.
LOCK_TIMEOUT = "5s"
APPLICATION_NAME = "secure-webhooks (pulumi)"


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
            raise ConnectionError(f"cannot connect to PostgreSQL as {self.describe()}: {exc}") from None


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
    def transaction(self) -> Iterator[psycopg.Cursor]:
        """A cursor inside one transaction: everything in it commits or nothing does."""
        with self._lock:
            if self._conn is None or self._conn.closed or self._conn.broken:
                self._conn = self.settings.connect()
            with self._conn.transaction(), self._conn.cursor() as cur:
                yield cur


class DatabaseProvider(ResourceProvider):
    """Base of our dynamic providers: connection settings come from `configure`.

    Instances carry no state when pickled into the Pulumi state (configure runs
    after unpickling), so the serialized provider never changes when settings
    or code change.
    """

    db: Database

    def configure(self, req: ConfigureRequest) -> None:
        self.db = Database(ConnectionSettings.from_config(req.config))

"""Throw-away PostgreSQL 15 clusters shaped like a Supabase database.

PostgreSQL refuses to run as root, so when we are root the server binaries run as the
``postgres`` OS user (via runuser); as any other user they run directly. Each cluster lives in
its own temporary directory, listens only on 127.0.0.1 (TCP, SCRAM passwords, like Supabase) and
keeps its unix socket inside that directory so it never collides with a system cluster.

pg_cron is preloaded, as on Supabase. Its jobs run over libpq connections to 127.0.0.1 as the
role that scheduled them, so the server starts with ``PGPASSFILE`` pointing at a 0600 file (owned
by the server's OS user, in the cluster's directory) that holds the non-superuser login roles'
passwords: pg_hba.conf keeps demanding SCRAM passwords from everyone.
"""

from __future__ import annotations

import atexit
import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from .bootstrap import LOGIN_ROLES, apply_bootstrap
from .extensions import install_stand_in_extensions

DEFAULT_PG_BINDIR = Path(os.environ.get("LOCAL_SUPABASE_PG_BINDIR", "/usr/lib/postgresql/15/bin"))
SERVER_OS_USER = "postgres"
ADMIN_ROLE = "supabase_admin"
HOST = "127.0.0.1"
DBNAME = "postgres"
STATE_FILE_NAME = "connection.json"
VAULT_ROOT_KEY_FILE = "vault_root.key"
PASSFILE_NAME = "pgpass"
_CONF_FILE = "local_supabase.conf"
_START_ATTEMPTS = 3


class ClusterError(RuntimeError):
    """A server command failed; the message carries its output and the server log's tail."""


def _running_as_root() -> bool:
    return os.geteuid() == 0


def _command_prefix() -> list[str]:
    """Root must drop to the postgres OS user; everyone else runs the binaries directly."""
    return ["runuser", "-u", SERVER_OS_USER, "--"] if _running_as_root() else []


def _give_to_server_user(path: Path) -> None:
    if _running_as_root():
        account = pwd.getpwnam(SERVER_OS_USER)
        os.chown(path, account.pw_uid, account.pw_gid)


def _write_server_file(path: Path, text: str, mode: int = 0o600) -> None:
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    _give_to_server_user(path)


def free_port() -> int:
    """A loopback port nothing listens on now: for a server about to start, or an address that refuses."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def _conf_value(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _passfile_field(value: str) -> str:
    """A .pgpass field: backslash and colon are escaped with a backslash (libpq's rule)."""
    return value.replace("\\", "\\\\").replace(":", "\\:")


@dataclass
class LocalSupabase:
    """A running local cluster: connection facts plus lifecycle.

    Use ``LocalSupabase.start()`` (also a context manager) or ``from_state()`` to reattach to
    one started by the CLI.
    """

    base_dir: Path
    port: int
    passwords: dict[str, str]
    pg_bindir: Path = DEFAULT_PG_BINDIR
    host: str = HOST
    dbname: str = DBNAME
    _stopped: bool = field(default=False, repr=False)

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base_dir / "socket"

    @property
    def log_file(self) -> Path:
        return self.base_dir / "postgres.log"

    @property
    def passfile(self) -> Path:
        """The PGPASSFILE the server (and so pg_cron's job connections) runs with."""
        return self.base_dir / PASSFILE_NAME

    @property
    def is_running(self) -> bool:
        """Whether a postmaster holds the data directory (false after ``crash()``/``shutdown()``)."""
        return (self.data_dir / "postmaster.pid").exists()

    @property
    def admin_dsn(self) -> str:
        """Conninfo for the bootstrap superuser, the only superuser (as on Supabase)."""
        return self.dsn(ADMIN_ROLE)

    def password_for(self, role: str) -> str:
        """Password of a login role; the API roles are NOLOGIN and have none."""
        try:
            return self.passwords[role]
        except KeyError:
            raise KeyError(f"{role!r} cannot log in; connect as postgres and SET ROLE {role} instead") from None

    def dsn(self, user: str = "postgres") -> str:
        """libpq conninfo for ``user`` over TCP with password, as a Supabase client would use."""
        return psycopg.conninfo.make_conninfo(
            host=self.host,
            port=self.port,
            dbname=self.dbname,
            user=user,
            password=self.password_for(user),
        )

    @classmethod
    def start(
        cls,
        *,
        settings: Mapping[str, str] | None = None,
        preinstall_pgjwt: bool = True,
        preinstall_pg_net: bool = False,
        preinstall_pg_cron: bool = True,
        pg_bindir: Path = DEFAULT_PG_BINDIR,
        stop_at_exit: bool = True,
    ) -> LocalSupabase:
        """Create, start and bootstrap a new cluster; stop and delete it again on any failure.

        ``settings`` are extra postgresql.conf parameters, e.g. ``{"track_functions": "all"}``
        for benchmarks. ``preinstall_pg_cron=False`` leaves pg_cron preloaded but not created,
        like a project that has not enabled it. ``stop_at_exit=False`` leaves the server
        running after this process exits (used by the CLI, which stops it explicitly later).
        """
        install_stand_in_extensions(pg_bindir)
        base_dir = Path(tempfile.mkdtemp(prefix="local-supabase-"))
        _give_to_server_user(base_dir)
        passwords = {role: secrets.token_urlsafe(24) for role in LOGIN_ROLES}
        cluster = cls(base_dir=base_dir, port=0, passwords=passwords, pg_bindir=pg_bindir)
        if stop_at_exit:
            atexit.register(cluster.stop)
        try:
            cluster._initdb()
            cluster._start_server(dict(settings or {}))
            with psycopg.connect(cluster.admin_dsn, autocommit=True) as admin:
                apply_bootstrap(
                    admin,
                    {role: pw for role, pw in passwords.items() if role != ADMIN_ROLE},
                    preinstall_pgjwt=preinstall_pgjwt,
                    preinstall_pg_net=preinstall_pg_net,
                    preinstall_pg_cron=preinstall_pg_cron,
                )
        except BaseException:
            cluster.stop()
            raise
        return cluster

    @classmethod
    def from_state(cls, state_dir: Path) -> LocalSupabase:
        """Reattach to a cluster whose facts ``write_state`` saved in ``state_dir``."""
        state = json.loads((state_dir / STATE_FILE_NAME).read_text(encoding="utf-8"))
        return cls(
            base_dir=Path(state["base_dir"]),
            port=state["port"],
            passwords=state["passwords"],
            pg_bindir=Path(state["pg_bindir"]),
        )

    def write_state(self, state_dir: Path) -> Path:
        """Save connection facts as JSON (mode 0600: it holds passwords) for scripts to read."""
        state_dir.mkdir(parents=True, exist_ok=True)
        state = {
            "host": self.host,
            "port": self.port,
            "dbname": self.dbname,
            "admin_dsn": self.admin_dsn,
            "dsn": {role: self.dsn(role) for role in self.passwords},
            "passwords": self.passwords,
            "base_dir": str(self.base_dir),
            "data_dir": str(self.data_dir),
            "log_file": str(self.log_file),
            "pg_bindir": str(self.pg_bindir),
        }
        path = state_dir / STATE_FILE_NAME
        path.touch(mode=0o600)
        path.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
        return path

    def stop(self) -> None:
        """Stop the server (fast shutdown) and delete its directory. Safe to call repeatedly."""
        if self._stopped:
            return
        self._stopped = True
        atexit.unregister(self.stop)
        try:
            if self.is_running:
                self._pg_ctl_stop("fast")
        finally:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def crash(self) -> None:
        """Kill the server as a crash would (``pg_ctl stop -m immediate``), keeping its files.

        No shutdown checkpoint is written, so the next ``restart()`` runs crash recovery, which
        empties every UNLOGGED table (pg_net's queue and responses among them), exactly what a
        crashed Supabase database loses.
        """
        self._pg_ctl_stop("immediate")

    def shutdown(self) -> None:
        """Stop the server cleanly (``pg_ctl stop -m fast``), keeping its files for ``restart()``.

        Unlike ``stop()`` nothing is deleted; unlogged tables survive a clean shutdown.
        """
        self._pg_ctl_stop("fast")

    def restart(self, timeout: float = 60.0) -> None:
        """Start the server again on the same port and data directory; return once it accepts connections.

        A running server is shut down cleanly first (a clean restart); after ``crash()`` the
        start runs crash recovery. Raises ClusterError if the server does not come up, e.g.
        because another process took the port meanwhile.
        """
        if self._stopped:
            raise ClusterError("this cluster was stopped and deleted; start a new one")
        if self.is_running:
            self._pg_ctl_stop("fast")
        self._pg_ctl_start(timeout)
        self._wait_until_accepting(timeout)

    def _pg_ctl_stop(self, mode: str) -> None:
        self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", mode, "-w", "-t", "60")

    def _pg_ctl_start(self, timeout: float = 60.0) -> None:
        # The postmaster and so pg_cron's job connections inherit PGPASSFILE from pg_ctl.
        self._run(
            "pg_ctl", "start", "-D", str(self.data_dir), "-l", str(self.log_file),
            "-w", "-t", str(max(int(timeout), 1)),
            env={**os.environ, "PGPASSFILE": str(self.passfile)},
        )  # fmt: skip

    def _wait_until_accepting(self, timeout: float) -> None:
        """pg_ctl -w waits for the postmaster; also make sure a login over TCP succeeds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.admin_dsn, connect_timeout=5) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError as error:
                if time.monotonic() > deadline:
                    raise ClusterError(
                        f"server did not accept connections within {timeout} s: {type(error).__name__}"
                        f"\n--- server log tail ---\n{self._log_tail()}"
                    ) from None
                time.sleep(0.05)

    def __enter__(self) -> LocalSupabase:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self, program: str, *args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        command = [*_command_prefix(), str(self.pg_bindir / program), *args]
        try:
            # cwd: the postgres OS user may not be allowed into the caller's directory.
            return subprocess.run(command, check=True, capture_output=True, text=True, cwd=self.base_dir, env=env)
        except subprocess.CalledProcessError as error:
            raise ClusterError(
                f"{' '.join(command)} failed ({error.returncode}):\n{error.stdout}{error.stderr}"
                f"\n--- server log tail ---\n{self._log_tail()}"
            ) from error

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def _initdb(self) -> None:
        pwfile = self.base_dir / "pwfile"
        _write_server_file(pwfile, self.passwords[ADMIN_ROLE] + "\n")
        try:
            self._run(
                "initdb",
                "-D", str(self.data_dir),
                "-U", ADMIN_ROLE,
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
                "--no-instructions",
            )  # fmt: skip
        finally:
            pwfile.unlink()
        _write_server_file(
            self.data_dir / "pg_hba.conf",
            "# local_supabase: passwords everywhere, loopback TCP only\n"
            "local all all scram-sha-256\n"
            f"host  all all {HOST}/32 scram-sha-256\n",
        )
        with open(self.data_dir / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write(f"\ninclude = '{_CONF_FILE}'\n")
        # The stand-in Vault's root key, outside every table like Supabase's key file; the
        # preloaded supabase_vault library reads it once at server start.
        _write_server_file(self.data_dir / VAULT_ROOT_KEY_FILE, secrets.token_hex(32) + "\n")
        self.socket_dir.mkdir(mode=0o700)
        _give_to_server_user(self.socket_dir)
        self._write_passfile()

    def _write_passfile(self) -> None:
        """Passwords for pg_cron's libpq job connections, readable by the server's OS user only.

        The superuser's is left out on purpose: ``postgres`` has BYPASSRLS and ALL on
        ``cron.job``, so it could re-label its own job as ``supabase_admin``'s; without that
        password such a job fails to log in instead of running as superuser.
        """
        lines = [
            f"{HOST}:*:*:{_passfile_field(role)}:{_passfile_field(password)}\n"
            for role, password in self.passwords.items()
            if role != ADMIN_ROLE
        ]
        _write_server_file(self.passfile, "".join(lines))

    def _start_server(self, settings: dict[str, str]) -> None:
        """Pick a free port and start; retry if another process grabbed the port meanwhile."""
        for attempt in range(1, _START_ATTEMPTS + 1):
            self.port = free_port()
            conf = {
                "listen_addresses": HOST,
                "port": str(self.port),
                "unix_socket_directories": str(self.socket_dir),
                "fsync": "off",
                # As on Supabase: the Vault loads its root key once, when the server starts, and
                # pg_cron's launcher is a background worker registered at start.
                "shared_preload_libraries": "supabase_vault,pg_cron",
                "cron.database_name": DBNAME,
                # Jobs connect over TCP (the only address we listen on) with PGPASSFILE's passwords.
                "cron.host": HOST,
                **settings,
            }
            _write_server_file(
                self.data_dir / _CONF_FILE,
                "".join(f"{name} = {_conf_value(value)}\n" for name, value in conf.items()),
            )
            try:
                self._pg_ctl_start()
                return
            except ClusterError as error:
                if attempt == _START_ATTEMPTS or "could not bind" not in str(error):
                    raise

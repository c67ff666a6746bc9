"""Where the operator command connects: the stack's own `postgresql:*` config, or an explicit conninfo."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import psycopg

from secure_webhooks.database import ConnectionSettings


class OperatorError(RuntimeError):
    """A problem the operator can fix; printed as one line, never with a traceback."""


class _StackConfig:
    def __init__(self, values: dict[str, str]) -> None:
        self._values = values

    def get(self, key: str) -> str | None:
        return self._values.get(key)


def stack_settings(stack: str | None, project_dir: Path) -> ConnectionSettings:
    """The connection the stack's providers use, read with `pulumi config` (secrets decrypted locally)."""
    if shutil.which("pulumi") is None:
        raise OperatorError("`pulumi` is not on PATH; put it there or pass --dsn 'host=... dbname=...'")
    command = ["pulumi", "config", "--json", "--show-secrets", *(["--stack", stack] if stack else [])]
    result = subprocess.run(command, cwd=project_dir, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        problem = (result.stderr or result.stdout).strip().splitlines()
        raise OperatorError(f"cannot read the stack config with `pulumi config`: {problem[-1] if problem else '?'}")
    raw = json.loads(result.stdout or "{}")
    values = {key: str(entry.get("value")) for key, entry in raw.items() if entry.get("value") is not None}
    return ConnectionSettings.from_config(_StackConfig(values))


def connect(dsn: str | None, stack: str | None, project_dir: Path) -> psycopg.Connection:
    if dsn is not None:
        try:
            return psycopg.connect(dsn, autocommit=True, connect_timeout=10)
        except psycopg.OperationalError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise OperatorError(f"cannot connect with --dsn: {first}") from None
    try:
        conn = stack_settings(stack, project_dir).connect()
    except ConnectionError as exc:
        raise OperatorError(str(exc).splitlines()[0]) from None
    conn.autocommit = True
    return conn

"""Where the operator command connects: the stack's own `postgresql:*` config, or an explicit conninfo."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import unquote

import psycopg

from secure_webhooks.postgres.database import ConnectionSettings


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


#: The password of a URI's user info (`scheme://user:password@host`): up to the last `@` before the path,
#: and up to the first `@` too, since a malformed URI may be read either way.
_URI_PASSWORDS = (
    re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^:@/]*:(?P<password>.*)@"),
    re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^:@/]*:(?P<password>[^@]*)@"),
)
#: A `password=` keyword of a key/value conninfo (quoted or not), or a URI's `password=` query parameter.
_KEYWORD_PASSWORDS = (
    re.compile(r"password\s*=\s*'(?P<password>(?:[^'\\]|\\.)*)'?"),
    re.compile(r"password\s*=\s*(?P<password>[^\s&]*)"),
)
#: A quoted fragment of a libpq message (libpq quotes the text it could not parse).
_QUOTED = re.compile(r'"[^"]*"|\'[^\']*\'')
#: Outside quotes, libpq writes its own words: a candidate shorter than this is not searched for there
#: (a malformed URI can make a fragment like "pa" look like a password).
_UNQUOTED_MINIMUM = 6


def dsn_passwords(dsn: str) -> list[str]:
    """Every string in `dsn` that may be its password, as written and percent-decoded: longest first."""
    found = {
        match.group("password")
        for pattern in (*_URI_PASSWORDS, *_KEYWORD_PASSWORDS)
        for match in pattern.finditer(dsn)
        if match.group("password")
    }
    found |= {unquote(password) for password in found}
    return sorted((password for password in found if password), key=len, reverse=True)


def _masked(text: str, passwords: list[str]) -> str:
    for password in passwords:
        text = text.replace(password, "***")
    return text


def redact_dsn_error(message: str, dsn: str) -> str:
    """libpq's message about `dsn`, on one line, with no fragment of the DSN's password left in it.

    libpq quotes the whole URI (`... in URI: "postgresql://user:secret@..."`) or the token it could
    not decode, so every possible password is masked in quoted text, a quoted fragment that still
    holds user info (an `@`) or a password keyword is dropped, and libpq's own words are searched for
    every candidate long enough not to be one of them.
    """
    passwords = dsn_passwords(dsn)

    def quoted(match: re.Match[str]) -> str:
        fragment = _masked(match.group(), passwords)
        return '"…"' if "@" in fragment or "password" in fragment.lower() else fragment

    text = _QUOTED.sub(quoted, " ".join(message.split()))
    return _masked(text, [password for password in passwords if len(password) >= _UNQUOTED_MINIMUM])


def connect(dsn: str | None, stack: str | None, project_dir: Path) -> psycopg.Connection:
    if dsn is not None:
        try:
            return psycopg.connect(dsn, autocommit=True, connect_timeout=10)
        except psycopg.Error as exc:  # a malformed conninfo is a ProgrammingError, quoting the DSN
            first = str(exc).strip() or type(exc).__name__
            raise OperatorError(f"cannot connect with --dsn: {redact_dsn_error(first, dsn)}") from None
    try:
        conn = stack_settings(stack, project_dir).connect()
    except ConnectionError as exc:
        raise OperatorError(str(exc).splitlines()[0]) from None
    conn.autocommit = True
    return conn

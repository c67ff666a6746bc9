"""Which keys sign, for `status`: key ids (kids) of the Vault secrets the installed reconciler reads.

The Vault secret names come from the reconciler's source as installed (`pg_proc.prosrc` of
secure_webhooks.reconcile): that is what the next round runs, so it is true for this database
whatever the stack's config says (config set but not yet `up`, an `up` that failed halfway, or
another stack's checkout). The installation record in the private store lists the Vault secrets the
stack keeps, not which of them signs; the stack's config is what the next `up` will install.

Kids are computed inside PostgreSQL (trigger_function.key_id_expression, the same function the
signer writes into every token), so no key, nor any part of one, leaves the database. A staged key is
the rotation partner (`<name>_next`) of the secret the signer reads, present in the Vault but not
read; keys retiring are the records of signing/key_rotation.py: each may leave the Vault once the
last token (or Standard Webhooks timestamp) it signed has expired.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg

from secure_webhooks.configuration.settings import NEXT_SUFFIX, rotation_partner
from secure_webhooks.delivery.outbox import SCHEMA
from secure_webhooks.delivery.reconciler import RECONCILE
from secure_webhooks.signing.key_rotation import STORE
from secure_webhooks.signing.trigger_function import key_id_expression
from webhook_deliveries.health import iso

#: The round's Vault reads, as trigger_function/reconciler render them: the variable, then the name literal.
#: sql_literal writes a name with a backslash as E'...' (backslash doubled), any other as '...'.
_VAULT_READ = re.compile(
    r"INTO (secret|webhook_key|previous_webhook_key)\s+FROM vault\.decrypted_secrets AS s\s+"
    r"WHERE s\.name =\s+(E?)'((?:[^'\\]|''|\\.)*)'"
)
_SOURCE = """
SELECT p.prosrc FROM pg_catalog.pg_proc AS p JOIN pg_catalog.pg_namespace AS n ON n.oid = p.pronamespace
 WHERE n.nspname = %s AND p.proname = %s
"""
_KIDS = f"""
SELECT s.name, {key_id_expression("s.decrypted_secret")} FROM vault.decrypted_secrets AS s
 WHERE s.name = ANY(%s) AND s.decrypted_secret IS NOT NULL
"""


@dataclass(frozen=True)
class Key:
    """A Vault secret by name, and the id of the key it holds (None: not in the Vault, or not readable)."""

    vault_secret: str
    kid: str | None

    def as_json(self) -> dict[str, Any]:
        return {"vault_secret": self.vault_secret, "kid": self.kid}

    def describe(self) -> str:
        return f"kid {self.kid or '(missing from the Vault)'} (Vault secret {self.vault_secret})"


@dataclass(frozen=True)
class Retiring:
    """A key that stopped signing; it may leave the Vault from `may_leave_at` on."""

    kid: str
    stopped_signing_at: datetime
    may_leave_at: datetime
    may_leave_now: bool

    def as_json(self) -> dict[str, Any]:
        return {
            "kid": self.kid,
            "stopped_signing_at": iso(self.stopped_signing_at),
            "may_leave_vault_at": iso(self.may_leave_at),
            "may_leave_vault_now": self.may_leave_now,
        }

    def describe(self) -> str:
        when = "now" if self.may_leave_now else f"at {_utc(self.may_leave_at)}"
        return f"kid {self.kid} stopped signing at {_utc(self.stopped_signing_at)}; may leave the Vault {when}"


@dataclass(frozen=True)
class Signing:
    """One kind of key (the HS256 key of the token, or the whsec_ key of `webhook-signature`)."""

    signs: Key
    #: In the Vault beside it, not read yet: the operator staged it (docs/key-rotation.md, "Stage").
    staged: Key | None = None
    #: whsec_ only: the promoted-from key whose signature still follows, until retire.
    also_signs: Key | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            **self.signs.as_json(),
            "staged": None if self.staged is None else self.staged.as_json(),
            "also_signing": None if self.also_signs is None else self.also_signs.as_json(),
        }


@dataclass(frozen=True)
class SigningKeys:
    jwt: Signing | None
    webhook: Signing | None
    retiring: tuple[Retiring, ...]
    #: Why part of it could not be read (a role without access to the Vault or the private store).
    problem: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "source": f"{SCHEMA}.{RECONCILE}() as installed",
            "jwt": None if self.jwt is None else self.jwt.as_json(),
            "webhook": None if self.webhook is None else self.webhook.as_json(),
            "retiring": [key.as_json() for key in self.retiring],
            "problem": self.problem,
        }

    def lines(self) -> list[str]:
        """What the status table prints under the reconciler's line."""
        out = []
        for label, signing in (("jwt key", self.jwt), ("webhook key", self.webhook)):
            if signing is None:
                continue
            line = f"{label}: signs with {signing.signs.describe()}"
            if signing.also_signs is not None:
                line += f", and also {signing.also_signs.describe()} until retired"
            if signing.staged is not None:
                line += f"; staged: {signing.staged.describe()}"
            out.append(line)
        if self.jwt is None:
            out.append("jwt key: unknown (the reconciler is not installed)")
        for key in self.retiring:
            out.append(f"retiring: {key.describe()}")
        if self.problem:
            out.append(f"keys: {self.problem}")
        return out


def vault_reads(source: str) -> dict[str, str]:
    """{variable: Vault secret name} of the reconciler's source: `secret`, `webhook_key`, `previous_webhook_key`."""
    return {variable: _unquote(literal, escaped == "E") for variable, escaped, literal in _VAULT_READ.findall(source)}


def _unquote(literal: str, escaped: bool) -> str:
    text = literal.replace("''", "'")
    return re.sub(r"\\(.)", r"\1", text) if escaped else text


def read_signing_keys(conn: psycopg.Connection) -> SigningKeys:
    row = conn.execute(_SOURCE, (SCHEMA, RECONCILE)).fetchone()
    reads = vault_reads(row[0]) if row else {}
    if "secret" not in reads:
        return SigningKeys(None, None, ())
    jwt_name, webhook_name = reads["secret"], reads.get("webhook_key")
    previous_webhook = reads.get("previous_webhook_key")
    names = [jwt_name, rotation_partner(jwt_name)]
    if webhook_name is not None:
        names += [webhook_name, rotation_partner(webhook_name)]
    problems = []
    try:
        kids = dict(conn.execute(_KIDS, (names,)).fetchall())
    except psycopg.errors.InsufficientPrivilege:
        kids = {}
        problems.append("this role may not read vault.decrypted_secrets: key ids unknown")
    except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedFunction):
        kids = {}
        problems.append("the Vault or pgcrypto's hmac is missing here: key ids unknown")
    try:
        retiring = _retiring(conn)
    except psycopg.errors.InsufficientPrivilege:
        retiring = ()
        problems.append(f"this role may not read {STORE.name}: keys retiring unknown")

    def signing(name: str, also: str | None = None) -> Signing:
        partner = rotation_partner(name)
        # the partner of a promoted `<name>_next` is the key it replaced: retiring, not staged
        staged = Key(partner, kids[partner]) if not name.endswith(NEXT_SUFFIX) and partner in kids else None
        return Signing(Key(name, kids.get(name)), staged, None if also is None else Key(also, kids.get(also)))

    webhook = None if webhook_name is None else signing(webhook_name, previous_webhook)
    return SigningKeys(signing(jwt_name), webhook, retiring, "; ".join(problems) or None)


def _retiring(conn: psycopg.Connection) -> tuple[Retiring, ...]:
    with conn.cursor() as cur:
        if not STORE.exists(cur):
            return ()
        relation = STORE.relation.as_string(cur)
        rows = cur.execute(
            f"SELECT r.kid, r.stopped_signing_at, r.valid_until, r.valid_until <= pg_catalog.now()"
            f" FROM {relation} AS r ORDER BY r.valid_until, r.kid"
        ).fetchall()
    return tuple(Retiring(*row) for row in rows)


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")

"""Dynamic provider for the JWT signing secret in Supabase Vault (optional).

Only used when `secure-webhooks:jwtSecret` (or `webhookSecret`) is set. The value travels as a
Pulumi secret input and as a query parameter, never in SQL text, logs or
plaintext state. `read` compares the Vault's value with the configured one
inside PostgreSQL, so drift is seen without the value leaving the database.
A secret this stack created is deleted on destroy; one it adopted is left in
place (the orchestrator verifies with it) with its description restored.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pulumi
from pulumi.dynamic import CheckFailure, CheckResult, CreateResult, DiffResult, ReadResult, UpdateResult

from components.database import DatabaseProvider
from components.ownership import claim, marker, owner_of, refusal
from components.settings import ConfigError, check_jwt_secret, check_webhook_secret

INPUTS = ("name", "secret", "owner")


def find_secret(cur: psycopg.Cursor, name: str, value: str) -> tuple[str, str | None, bool] | None:
    """(id, description, value matches) of the named secret, or None."""
    cur.execute(
        "SELECT id::text, description, decrypted_secret = %s FROM vault.decrypted_secrets WHERE name = %s",
        (value, name),
    )
    return cur.fetchone()


def _state(row: tuple[str, str | None, bool]) -> dict[str, Any]:
    secret_id, description, matches = row
    return {"secret_id": secret_id, "managed_by": owner_of(description), "value_matches": bool(matches)}


class VaultSecretProvider(DatabaseProvider):
    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures: list[CheckFailure] = []
        try:
            # "kind" is absent from state written before webhook secrets existed: those are JWT keys.
            (check_webhook_secret if news.get("kind") == "webhook" else check_jwt_secret)(news["secret"])
        except ConfigError as exc:
            failures.append(CheckFailure("secret", str(exc)))
        with self.db.transaction() as cur:
            cur.execute("SELECT pg_catalog.to_regclass('vault.secrets') IS NOT NULL")
            if not cur.fetchone()[0]:
                failures.append(CheckFailure("name", "Supabase Vault is not installed (no table vault.secrets)"))
                return CheckResult(news, failures)
            cur.execute("SELECT description FROM vault.secrets WHERE name = %s", (news["name"],))
            row = cur.fetchone()
        if row is not None and (reason := refusal("Vault secret", repr(news["name"]), row[0], news["owner"])):
            failures.append(CheckFailure("name", reason))
        return CheckResult(news, failures)

    def create(self, props: dict[str, Any]) -> CreateResult:
        adopted_description = None
        with self.db.transaction() as cur:
            existing = find_secret(cur, props["name"], props["secret"])
            if existing is None:
                cur.execute(
                    "SELECT vault.create_secret(%s, %s, %s)", (props["secret"], props["name"], marker(props["owner"]))
                )
            else:
                if claim("Vault secret", repr(props["name"]), existing[1], props["owner"]):
                    adopted_description = existing[1] or ""
                    pulumi.log.info(f"adopting existing Vault secret {props['name']!r}; destroy will leave it")
                cur.execute(
                    "SELECT vault.update_secret(%s::uuid, %s, NULL, %s)",
                    (existing[0], props["secret"], marker(props["owner"])),
                )
            row = find_secret(cur, props["name"], props["secret"])
        return CreateResult(row[0], {**props, **_state(row), "adopted_description": adopted_description})

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        with self.db.transaction() as cur:
            row = find_secret(cur, props["name"], props["secret"])
        if row is None:
            return ReadResult(None, {})
        return ReadResult(id_, {**props, **_state(row)})

    def diff(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = [key for key in INPUTS if olds.get(key) != news.get(key)]
        if olds.get("managed_by") != news["owner"] or not olds.get("value_matches"):
            changed.append("secret")
        replaces = ["name"] if olds.get("name") != news.get("name") else []
        return DiffResult(changes=bool(changed), replaces=replaces, delete_before_replace=True)

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        with self.db.transaction() as cur:
            existing = find_secret(cur, news["name"], news["secret"])
            if existing is None:
                raise RuntimeError(f"Vault secret {news['name']!r} disappeared; run `pulumi refresh` and retry")
            claim("Vault secret", repr(news["name"]), existing[1], news["owner"])
            cur.execute(
                "SELECT vault.update_secret(%s::uuid, %s, NULL, %s)",
                (existing[0], news["secret"], marker(news["owner"])),
            )
            row = find_secret(cur, news["name"], news["secret"])
        return UpdateResult({**news, **_state(row), "adopted_description": olds.get("adopted_description")})

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        with self.db.transaction() as cur:
            existing = find_secret(cur, props["name"], props["secret"])
            if existing is None or owner_of(existing[1]) != props["owner"]:
                return
            if props.get("adopted_description") is not None:
                cur.execute(
                    "SELECT vault.update_secret(%s::uuid, NULL, NULL, %s)", (existing[0], props["adopted_description"])
                )
            else:
                cur.execute("DELETE FROM vault.secrets WHERE id = %s::uuid", (existing[0],))


class VaultSecret(pulumi.dynamic.Resource, module="secure-webhooks", name="VaultSecret"):
    """The named Vault secret holding the HS256 key, when this stack manages it."""

    secret_id: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        secret_name: str,
        value: pulumi.Input[str],
        owner: str,
        kind: str = "jwt",
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props = {"name": secret_name, "secret": pulumi.Output.secret(value), "owner": owner, "secret_id": None}
        if kind != "jwt":  # JWT keys keep the props they had before other kinds existed
            props["kind"] = kind
        opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=["secret"]))
        super().__init__(VaultSecretProvider(), name, props, opts)

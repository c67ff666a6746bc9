"""Dynamic provider for the JWT signing secret in Supabase Vault (optional).

Only used when `secure-webhooks:jwtSecret` (or `webhookSecret`) is set. The value travels as a
Pulumi secret input and reaches PostgreSQL only as `COPY ... FROM STDIN` data
(binary) into a temporary table that the transaction drops: never as SQL text
or a bind parameter, which `log_statement = all` would write to the server log.
`read` compares the Vault's value with the configured one inside PostgreSQL,
so drift is seen without the value leaving the database or entering a log.
A secret this stack created is deleted on destroy; one it adopted is left in
place (the orchestrator verifies with it) with its description restored from
the adoption record in the database (adoption.py).
Neither is deleted while a function this stack manages still reads it (e.g. after
`pulumi config rm secure-webhooks:jwtSecret`): it is left in place, no longer
marked as ours, with a warning; in `pulumi destroy` those functions go first.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pulumi
from pulumi.dynamic import CheckFailure, CheckResult, CreateResult, DiffResult, ReadResult, UpdateResult

from secure_webhooks.configuration.config_errors import STACK_CONFIG, ConfigError, KeyNames
from secure_webhooks.configuration.settings import check_alert_url_secret, check_jwt_secret, check_webhook_secret
from secure_webhooks.installation import adoption
from secure_webhooks.installation.installation_provider import instance_input, refuse_stale_instance
from secure_webhooks.installation.ownership import claim, marker, owner_of, refusal
from secure_webhooks.postgres.database import DatabaseProvider
from secure_webhooks.signing import key_rotation
from secure_webhooks.signing.trigger_function import sql_literal

INPUTS = ("name", "secret", "owner")


#: The temporary table the configured value is copied into, once per transaction (ON COMMIT DROP).
VALUE_TABLE = "pg_temp.secure_webhooks_secret_value"


def load_value(cur: psycopg.Cursor, value: str) -> None:
    """Hand `value` to this transaction as COPY data, which no log_statement setting logs.

    Binary COPY, so even an error's CONTEXT line names only the column, never the row.
    """
    cur.execute(f"CREATE TEMPORARY TABLE {VALUE_TABLE.split('.')[1]} (value text NOT NULL) ON COMMIT DROP")
    with cur.copy(f"COPY {VALUE_TABLE} (value) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(["text"])
        copy.write_row((value,))


def find_secret(cur: psycopg.Cursor, name: str, compare: bool = True) -> tuple[str, str | None, bool | None] | None:
    """(id, description, value matches the loaded one) of the named secret, or None.

    `compare` needs `load_value` earlier in the same transaction; without it the match is None.
    """
    matches = f"decrypted_secret = (SELECT value FROM {VALUE_TABLE})" if compare else "NULL::boolean"
    cur.execute(f"SELECT id::text, description, {matches} FROM vault.decrypted_secrets WHERE name = %s", (name,))
    return cur.fetchone()


def _set_value(cur: psycopg.Cursor, secret_id: str, description: str) -> None:
    """Give the secret the loaded value and `description` (vault.update_secret keeps its name)."""
    cur.execute(f"SELECT vault.update_secret(%s::uuid, value, NULL, %s) FROM {VALUE_TABLE}", (secret_id, description))


#: The adoption record of an existing secret: only its description, which destroy gives back.
_RECORD = """
SELECT pg_catalog.jsonb_build_object('description', coalesce(s.description, ''))
  FROM vault.secrets s WHERE s.id = %(id)s::uuid"""


def _adopted_description(cur: psycopg.Cursor, name: str) -> str | None:
    record = adoption.recorded(cur, adoption.VAULT_SECRET, [name])
    return None if record is None else record["description"]


def _create(cur: psycopg.Cursor, name: str, owner: str, instance: str | None = None) -> None:
    """A new secret `name` holding the loaded value, marked as `owner`'s (written by `instance`)."""
    cur.execute(f"SELECT vault.create_secret(value, %s, %s) FROM {VALUE_TABLE}", (name, marker(owner, instance)))


def _state(row: tuple[str, str | None, bool]) -> dict[str, Any]:
    secret_id, description, matches = row
    return {"secret_id": secret_id, "managed_by": owner_of(description), "value_matches": bool(matches)}


def readers(cur: psycopg.Cursor, name: str, owner: str) -> list[str]:
    """Functions managed by `owner` (marker in their COMMENT) whose body names the secret `name`.

    The trigger function and the reconciler read the Vault by the secret's name written as a
    literal in their body (trigger_function.py, reconciler.py), so the body tells who still needs it.
    """
    cur.execute(
        """
        SELECT pg_catalog.format('%%I.%%I()', n.nspname, p.proname), pg_catalog.obj_description(p.oid, 'pg_proc')
          FROM pg_catalog.pg_proc p
          JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
         WHERE pg_catalog.strpos(p.prosrc, %s) > 0
         ORDER BY 1
        """,
        (sql_literal(name),),
    )
    return [function for function, comment in cur.fetchall() if owner_of(comment) == owner]


def _kept_prefix(owner: str) -> str:
    return f"Kept by secure-webhooks: Pulumi stack {owner} stopped managing it while "


def kept_description(owner: str, functions: list[str]) -> str:
    """The description of a secret left in place for `functions`: it no longer carries our marker."""
    return f"{_kept_prefix(owner)}{', '.join(functions)} still read it; delete it by hand once nothing uses it."


def kept_for(description: str | None, owner: str) -> bool:
    """True for a secret this stack created and then left in place (setting jwtSecret again takes it back)."""
    return (description or "").startswith(_kept_prefix(owner))


def setting_of(props: dict[str, Any]) -> str:
    """The stack config key holding this secret's value: "setting" is absent for the current keys (and
    from state written before rotation existed), whose kind names them."""
    return props.get("setting") or ("webhookSecret" if props.get("kind") == "webhook" else "jwtSecret")


class VaultSecretProvider(DatabaseProvider):
    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures: list[CheckFailure] = []
        names = KeyNames.of(news)
        try:
            # "kind" is absent from state written before webhook secrets existed: those are JWT keys.
            checks = {"webhook": check_webhook_secret, "alert_url": check_alert_url_secret}
            checks.get(news.get("kind"), check_jwt_secret)(news["secret"], setting_of(news))
        except ConfigError as exc:
            failures.append(CheckFailure("secret", str(exc.named_for(names))))
        with self.db.transaction() as cur:
            cur.execute("SELECT pg_catalog.to_regclass('vault.secrets') IS NOT NULL")
            if not cur.fetchone()[0]:
                failures.append(CheckFailure("name", "Supabase Vault is not installed (no table vault.secrets)"))
                return CheckResult(news, failures)
            cur.execute("SELECT description FROM vault.secrets WHERE name = %s", (news["name"],))
            row = cur.fetchone()
            retiring = None
            if row is not None and olds.get("secret") is not None and olds.get("secret") != news["secret"]:
                # A new value for a key of ours: the key it replaces leaves the Vault.
                retiring = key_rotation.retire_refusal(cur, news["name"])
        if row is not None and (reason := refusal("Vault secret", repr(news["name"]), row[0], news["owner"])):
            failures.append(CheckFailure("name", reason))
        if retiring is not None:
            failures.append(CheckFailure("secret", names.rename(f"secure-webhooks:{setting_of(news)}: {retiring}")))
        return CheckResult(news, failures)

    def create(self, props: dict[str, Any]) -> CreateResult:
        adopting = False
        with self.db.transaction(f"creating Vault secret {props['name']!r}") as cur:
            load_value(cur, props["secret"])
            existing = find_secret(cur, props["name"])
            adoption.lock(cur)
            # A re-create (after a refresh dropped our state, or a killed CLI) keeps the first record.
            recorded = _adopted_description(cur, props["name"]) is not None
            if existing is None:
                _create(cur, props["name"], props["owner"], props.get("instance"))
            else:
                adopting = claim("Vault secret", repr(props["name"]), existing[1], props["owner"])
                adopting = adopting and not kept_for(existing[1], props["owner"]) and not recorded
                if adopting:
                    adoption.record_from_catalog(
                        cur, adoption.VAULT_SECRET, [props["name"]], props["owner"], _RECORD, {"id": existing[0]}
                    )
                _set_value(cur, existing[0], marker(props["owner"], props.get("instance")))
            row = find_secret(cur, props["name"])
            adopted_description = _adopted_description(cur, props["name"])
        if adopting:  # only now: the adoption has committed
            pulumi.log.info(f"adopted existing Vault secret {props['name']!r}; destroy will leave it")
        return CreateResult(row[0], {**props, **_state(row), "adopted_description": adopted_description})

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        with self.db.transaction(f"reading Vault secret {props['name']!r}") as cur:
            load_value(cur, props["secret"])
            row = find_secret(cur, props["name"])
            if row is None:
                adoption.lock(cur)
                owed = props.get("adopted_description") is not None or _adopted_description(cur, props["name"])
        if row is None and owed:
            # Gone, but adopted: kept in the state as drift (`up` puts the configured value back), so
            # that a refresh followed by destroy still reaches delete and its record.
            return ReadResult(id_, {**props, "managed_by": None, "value_matches": False})
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
        with self.db.transaction(f"updating Vault secret {news['name']!r}") as cur:
            load_value(cur, news["secret"])
            existing = find_secret(cur, news["name"])
            what = f"Vault secret {news['name']!r}"
            refuse_stale_instance(cur, news, what, existing[1] if existing else None)
            if existing is None:  # deleted out of band: the configured value goes back in
                _create(cur, news["name"], news["owner"], news.get("instance"))
            else:
                claim("Vault secret", repr(news["name"]), existing[1], news["owner"])
                _set_value(cur, existing[0], marker(news["owner"], news.get("instance")))
            key_rotation.forget_gone(cur)
            row = find_secret(cur, news["name"])
            adoption.lock(cur)
            adopted_description = _adopted_description(cur, news["name"])
        if adopted_description is None:  # state written before the database kept records
            adopted_description = olds.get("adopted_description")
        return UpdateResult({**news, **_state(row), "adopted_description": adopted_description})

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        """Give an adopted secret back its description, else delete ours (unless a function still reads it).

        The description comes from the database's record; state written by older code holds the only copy.
        """
        key = [props["name"]]
        with self.db.transaction(f"deleting Vault secret {props['name']!r}") as cur:
            existing = find_secret(cur, props["name"], compare=False)
            if existing is not None and owner_of(existing[1]) != props["owner"]:
                return
            refuse_stale_instance(cur, props, f"Vault secret {props['name']!r}", existing[1] if existing else None)
            adoption.lock(cur)
            description = _adopted_description(cur, props["name"])
            if description is None:
                description = props.get("adopted_description")
            if existing is None:  # gone: nothing to give back or delete
                adoption.forget(cur, adoption.VAULT_SECRET, key)
                return
            if description is not None:
                cur.execute("SELECT vault.update_secret(%s::uuid, NULL, NULL, %s)", (existing[0], description))
                adoption.forget(cur, adoption.VAULT_SECRET, key)
                return
            # Deleting the key under a live function would fail every insert (direct mode) or every
            # delivery (at-least-once) from then on: keep it, but stop claiming it.
            still_read_by = readers(cur, props["name"], props["owner"])
            if still_read_by:
                cur.execute(
                    "SELECT vault.update_secret(%s::uuid, NULL, NULL, %s)",
                    (existing[0], kept_description(props["owner"], still_read_by)),
                )
            else:
                cur.execute("DELETE FROM vault.secrets WHERE id = %s::uuid", (existing[0],))
                key_rotation.forget_gone(cur)
        if still_read_by:  # only now: the change has committed
            pulumi.log.warn(
                f"kept Vault secret {props['name']!r} in place: {', '.join(still_read_by)} managed by this stack "
                "still read it, and deleting it would make every webhook fail. This stack no longer manages it; "
                "delete it by hand once nothing uses it (`pulumi destroy` deletes it with the function)."
            )


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
        instance: pulumi.Input[str] | None = None,
        key_names: KeyNames = STACK_CONFIG,
        setting: str | None = None,
    ) -> None:
        props = {
            "name": secret_name,
            "secret": pulumi.Output.secret(value),
            "owner": owner,
            "instance": instance_input(instance, opts),
            "secret_id": None,
            **key_names.prop,
        }
        if kind != "jwt":  # JWT keys keep the props they had before other kinds existed
            props["kind"] = kind
        if setting is not None:  # a staged key (jwtSecretNext, ...): the current keys' props stay as they were
            props["setting"] = setting
        opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=["secret"]))
        super().__init__(VaultSecretProvider(), name, props, opts)

"""The stack instance's claim on the database, checked and taken before anything else changes.

Why a claim: every object a stack installs has a fixed name (the function, the
outbox schema, the reconciler's cron job, the Vault secrets), and the ownership
marker in their comments names a stack as project/stack only, which a
same-named stack in another backend shares. So the stack's first check mints
an instance id (kept in its inputs, so in the state), and its create records
(function, owner, instance) in a private table, in one transaction under an
advisory lock; every other resource of the stack depends on this one. Another
instance, or a second stack racing this one's `up`, fails here, before it has
changed anything, with a message naming both.

Why the checks live here too: the engine checks each resource when the
program registers it, and under `up --skip-preview` it creates those
registered before a failing one. Everything the stack creates waits for this
resource, so its check (every webhook's table, the extensions, the Vault, the
owners of the objects it would touch, the claim) stops a bad configuration
before the first change.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
import pulumi
from psycopg import sql
from psycopg.types.json import Jsonb
from pulumi.dynamic import CheckFailure, CheckResult, CreateResult, DiffResult, ReadResult, UpdateResult

from secure_webhooks.installation import adoption
from secure_webhooks.installation.ownership import OwnershipError, instance_of, owner_of
from secure_webhooks.installation.preflight import preflight_failures
from secure_webhooks.installation.private_store import PrivateStore
from secure_webhooks.postgres.database import DatabaseProvider

SCHEMA = "secure_webhooks_installation"
TABLE = "claims"
INPUTS = ("owner", "function_schema", "function_name", "replaces_instance", "instance")
REPLACES_KEY = "secure-webhooks:replacesInstance"
COMMENT = (
    "secure-webhooks: which Pulumi stack instance owns this database's webhooks. "
    "Written by `pulumi up`, removed by `pulumi destroy`; do not edit by hand."
)


@dataclass(frozen=True)
class Claim:
    owner: str
    instance: str
    claimed_at: datetime

    def describe(self) -> str:
        return f"Pulumi stack {self.owner} (instance {self.instance}, since {self.claimed_at:%Y-%m-%d %H:%M} UTC)"


STORE = PrivateStore(
    SCHEMA,
    TABLE,
    "(function text PRIMARY KEY, owner text NOT NULL, instance uuid NOT NULL,"
    " claimed_at timestamptz NOT NULL DEFAULT pg_catalog.now())",
    COMMENT,
)


def _function(props: dict[str, Any]) -> str:
    return f"{props['function_schema']}.{props['function_name']}()"


def find_claim(cur: psycopg.Cursor, props: dict[str, Any]) -> Claim | None:
    if not STORE.exists(cur):
        return None
    cur.execute(
        sql.SQL("SELECT owner, instance::text, claimed_at FROM {} WHERE function = %s").format(STORE.relation),
        (_function(props),),
    )
    row = cur.fetchone()
    return Claim(*row) if row else None


def claim_refusal(claim: Claim | None, props: dict[str, Any], instance: str, new: bool = False) -> str | None:
    """Why this stack instance may not change the database another instance claimed, or None."""
    if claim is None or claim.instance in (instance, props.get("replaces_instance")):
        return None
    this = f"a new instance, {instance}" if new else f"instance {instance}"
    return (
        f"the secure-webhooks installation of function {_function(props)} in this database belongs to "
        f"{claim.describe()}, not to this stack {props['owner']} ({this}); nothing was changed. Run `pulumi` "
        f"from that stack (one database is one stack). If that stack's state is gone for good, or an interrupted "
        f"`up` of this stack left the claim, take it over with `pulumi config set {REPLACES_KEY} {claim.instance}`."
    )


STALE_STATE_ADVICE = (
    "This stack's state is stale (the installation was taken over with secure-webhooks:replacesInstance): "
    "forget it with `pulumi stack rm --force`, which removes only this stack and its state, nothing in the database"
)


def claims_held(cur: psycopg.Cursor) -> list[Claim]:
    """Every claim in the database (one per installation's function), oldest first."""
    if not STORE.exists(cur):
        return []
    cur.execute(sql.SQL("SELECT owner, instance::text, claimed_at FROM {} ORDER BY claimed_at").format(STORE.relation))
    return [Claim(*row) for row in cur.fetchall()]


def stale_instance_refusal(cur: psycopg.Cursor, props: dict[str, Any], what: str, comment: str | None) -> str | None:
    """Why this resource's stack instance may not change or delete `what`, an object of the installation, or None.

    The project/stack marker cannot tell a same-named stack in another backend from this one, the claim
    can: the instance in `props` (every resource's `instance` input, from the stack's Installation) must
    hold a claim in this database. With no claim left, the instance that wrote the object's marker must be
    this one. State written before instance ids has none: such a resource may act only on an object whose
    marker names no instance either, since any instance written there came from a newer state than its own.
    """
    mine = props.get("instance") or None
    live = instance_of(comment)
    held = claims_held(cur)
    if mine is not None and held:
        if any(claim.instance == mine for claim in held):
            return None
        holder = held[-1].describe()
    elif mine is not None:
        if live in (None, mine):
            return None
        holder = f"Pulumi stack instance {live}"
    else:
        if live is None:
            return None
        holder = next((claim.describe() for claim in held if claim.instance == live), f"Pulumi stack instance {live}")
    this = f"instance {mine}" if mine else "an instance whose state predates instance ids"
    return (
        f"{what} belongs to the secure-webhooks installation of {holder}, not to this stack {props['owner']} "
        f"({this}); nothing was changed. {STALE_STATE_ADVICE}"
    )


def refuse_stale_instance(cur: psycopg.Cursor, props: dict[str, Any], what: str, comment: str | None) -> None:
    if reason := stale_instance_refusal(cur, props, what, comment):
        raise OwnershipError(reason)


def instance_input(instance: pulumi.Input[str] | None, opts: pulumi.ResourceOptions | None) -> pulumi.Input[str] | None:
    """A resource's `instance` input: the one given, else its stack's Installation among its dependencies.

    Never part of a resource's diff (it is fixed for a stack's life), so stacks deployed before
    resources had it show no change; each create or update records it in the resource's outputs.
    """
    if instance is not None:
        return instance
    for dependency in (opts.depends_on if opts is not None and isinstance(opts.depends_on, list) else None) or []:
        if isinstance(dependency, Installation):
            return dependency.instance
    return None


#: The stack's fixed-name objects, each with its comment (or a cron job's first command line).
_OWNED_OBJECTS = """
SELECT 'function ' || f.name, pg_catalog.obj_description(pg_catalog.to_regprocedure(f.name), 'pg_proc')
  FROM (SELECT pg_catalog.quote_ident(%(function_schema)s) || '.' || pg_catalog.quote_ident(%(function_name)s)
               || '()' AS name) AS f
 WHERE pg_catalog.to_regprocedure(f.name) IS NOT NULL
UNION ALL
SELECT 'schema ' || n.nspname, pg_catalog.obj_description(n.oid, 'pg_namespace')
  FROM pg_catalog.pg_namespace AS n WHERE n.nspname = ANY (%(schemas)s)
UNION ALL
SELECT 'trigger ' || t.tgname || ' on ' || n.nspname || '.' || c.relname,
       pg_catalog.obj_description(t.oid, 'pg_trigger')
  FROM pg_catalog.pg_trigger AS t
  JOIN pg_catalog.pg_class AS c ON c.oid = t.tgrelid
  JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
  JOIN pg_catalog.jsonb_to_recordset(%(triggers)s::jsonb) AS w(schema text, "table" text, name text)
    ON w.schema = n.nspname AND w."table" = c.relname AND w.name = t.tgname
 WHERE NOT t.tgisinternal AND t.tgparentid = 0
"""
_VAULT_SECRETS = (
    "SELECT 'Vault secret ' || pg_catalog.quote_literal(name), description FROM vault.secrets WHERE name = ANY (%s)"
)
_CRON_JOB = (
    "SELECT 'pg_cron job ' || jobname, pg_catalog.split_part(command, E'\\n', 1) FROM cron.job WHERE jobname = %s"
)


def foreign_objects(cur: psycopg.Cursor, props: dict[str, Any]) -> list[str]:
    """The objects this stack would touch that another stack's marker claims, each with that stack."""
    cur.execute(
        _OWNED_OBJECTS,
        {
            "function_schema": props["function_schema"],
            "function_name": props["function_name"],
            "schemas": list(props.get("schemas") or []),
            "triggers": Jsonb(list(props.get("triggers") or [])),
        },
    )
    owned = cur.fetchall()
    for relation, query, argument in (
        ("vault.secrets", _VAULT_SECRETS, list(props.get("vault_secrets") or [])),
        ("cron.job", _CRON_JOB, props.get("cron_job")),
    ):
        cur.execute("SELECT pg_catalog.to_regclass(%s) IS NOT NULL", (relation,))
        if argument and cur.fetchone()[0]:
            cur.execute(query, (argument,))
            owned += cur.fetchall()
    return [
        f"{name} is managed by Pulumi stack {owner}"
        for name, comment in owned
        if (owner := owner_of(comment)) is not None and owner != props["owner"]
    ]


class InstallationProvider(DatabaseProvider):
    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        """Everything `up` could fail on later, before it changes anything.

        The instance id is minted here, at the first check, and kept from the old inputs ever
        after: so it is in the state with the inputs, and every preview can tell this instance's
        claim from another's.
        """
        news = {**news, "instance": olds.get("instance") or str(uuid.uuid4())}
        with self.db.transaction() as cur:
            failures = preflight_failures(cur, news)
            problems = foreign_objects(cur, news)
            claim = find_claim(cur, news)
        failures += [CheckFailure("owner", f"{problem}, not {news['owner']}") for problem in problems]
        if reason := claim_refusal(claim, news, news["instance"], new=not olds):
            failures.append(CheckFailure("owner", reason))
        return CheckResult(news, failures)

    def _take(self, props: dict[str, Any], instance: str, purpose: str) -> Claim:
        """Check everything and write the claim, in one transaction under the claims lock."""
        with self.db.transaction(purpose) as cur:
            STORE.lock(cur)
            STORE.ensure(cur)  # before the claim is read (see PrivateStore.ensure); rolled back if refused
            claim = find_claim(cur, props)
            if reason := claim_refusal(claim, props, instance):
                raise OwnershipError(reason)
            if problems := foreign_objects(cur, props):
                raise OwnershipError(f"{'; '.join(problems)}, not {props['owner']}; nothing was changed")
            cur.execute(
                sql.SQL(
                    "INSERT INTO {} AS c (function, owner, instance) VALUES (%s, %s, %s) ON CONFLICT (function)"
                    " DO UPDATE SET owner = excluded.owner, instance = excluded.instance,"
                    " claimed_at = CASE WHEN c.instance = excluded.instance THEN c.claimed_at ELSE pg_catalog.now() END"
                ).format(STORE.relation),
                (_function(props), props["owner"], instance),
            )
            taken = find_claim(cur, props)
        assert taken is not None
        if claim is not None and claim.instance != instance:
            pulumi.log.info(f"took over the installation from {claim.describe()} ({REPLACES_KEY})")
        return taken

    def create(self, props: dict[str, Any]) -> CreateResult:
        instance = props["instance"]
        claim = self._take(props, instance, f"claiming the database for {props['owner']}")
        return CreateResult(instance, {**props, **_state(claim)})

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        with self.db.transaction() as cur:
            claim = find_claim(cur, props)
            grants = foreign_grants(cur)
        if claim is None:
            return ReadResult(None, {})
        return ReadResult(id_, {**props, **_state(claim), "foreign_grants": grants})

    def diff(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = [key for key in INPUTS if olds.get(key) != news.get(key)]
        if olds.get("claimed_by") != news["instance"]:
            changed.append("claimed_by")
        if olds.get("foreign_grants"):  # a grant in a private store, which we never make: update revokes it
            changed.append("foreign_grants")
        replaces = [key for key in ("function_schema", "function_name") if olds.get(key) != news.get(key)]
        return DiffResult(changes=bool(changed), replaces=replaces, delete_before_replace=True)

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        claim = self._take(news, news["instance"], f"renewing the database claim of {news['owner']}")
        with self.db.transaction(f"revoking grants in {adoption.STORE.name}") as cur:
            adoption.STORE.revoke_foreign(cur)  # the claims store's went in _take (PrivateStore.ensure)
            grants = foreign_grants(cur)
        return UpdateResult({**news, **_state(claim), "foreign_grants": grants})

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        with self.db.transaction(f"releasing the database claim of {props['owner']}") as cur:
            STORE.lock(cur)
            claim = find_claim(cur, props)
            if claim is None:
                return
            if claim.instance != props["instance"]:
                pulumi.log.warn(f"the database is now claimed by {claim.describe()}; leaving its claim in place")
                return
            cur.execute(sql.SQL("DELETE FROM {} WHERE function = %s").format(STORE.relation), (_function(props),))
            STORE.drop_if_empty(cur)


def foreign_grants(cur: psycopg.Cursor) -> list[str]:
    """`<store>: <role>` for every privilege someone holds in our private stores: none is ever granted."""
    return [f"{store.schema}: {role}" for store in (STORE, adoption.STORE) for role in store.foreign_grantees(cur)]


def _state(claim: Claim) -> dict[str, Any]:
    return {"claimed_by": claim.instance, "claimed_at": claim.claimed_at.isoformat()}


class Installation(pulumi.dynamic.Resource, module="secure-webhooks", name="Installation"):
    """This stack instance's claim on the database; every other resource of the stack depends on it."""

    instance: pulumi.Output[str]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(InstallationProvider(), name, {**props, "instance": None}, opts)


def installation_props(
    *,
    owner: str,
    function_schema: str,
    function_name: str,
    replaces_instance: str | None,
    triggers: list[dict[str, str]],
    vault_secrets: list[str],
    outbox_schema: str | None,
    cron_job: str | None,
    preflight: dict[str, Any],
) -> dict[str, Any]:
    """The provider's inputs: whose claim, what the stack will touch, and what preflight checks.

    `preflight` holds preflight_failures' inputs (signer, Vault secret names and whether this stack
    manages them, extensions_managed, and webhook_tables: every webhook's table with its config key).
    """
    return {
        "owner": owner,
        "function_schema": function_schema,
        "function_name": function_name,
        "replaces_instance": replaces_instance,
        "triggers": triggers,
        "vault_secrets": vault_secrets,
        "schemas": [outbox_schema] if outbox_schema else [],
        "cron_job": cron_job,
        **preflight,
    }

"""Dynamic provider for the secure trigger function.

pulumi-postgresql's Function resource cannot set `search_path`, so the
function is managed here: created and replaced atomically with
CREATE OR REPLACE, read back from the catalog so `pulumi refresh` sees an
edited body or loosened security, adopted if it already exists (the seed's
manual migration: recorded in the database, see adoption.py) and given back
from that record on destroy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
import pulumi
from psycopg import sql
from pulumi.dynamic import CheckFailure, CheckResult, CreateResult, DiffResult, ReadResult, UpdateResult

from secure_webhooks.delivery.ordering import DEFAULT_ORDERING
from secure_webhooks.installation import adoption
from secure_webhooks.installation.installation_provider import instance_input, refuse_stale_instance
from secure_webhooks.installation.ownership import claim, marker, owner_of, refusal
from secure_webhooks.postgres.catalog import existing_roles
from secure_webhooks.postgres.database import DatabaseProvider
from secure_webhooks.signing import key_rotation
from secure_webhooks.signing.trigger_function import (
    FunctionSpec,
    body_sha256,
    canonical_claims,
    claims_from_props,
    create_statement,
    render_body,
)

#: Roles that must never be able to call a SECURITY DEFINER function directly
#: (Supabase linter rules anon_/authenticated_security_definer_function_executable).
CLIENT_ROLES = ("anon", "authenticated")
#: proconfig of the function, in the order create_statement sets them.
SETTINGS = ['search_path=""', "plan_cache_mode=force_generic_plan"]

INPUTS = (
    "schema",
    "name",
    "secret_name",
    "signer",
    "claims",
    "token_ttl_seconds",
    "timeout_ms",
    "mode",
    "bind_request",
    "audience",
    "webhook_secret_name",
    "previous_webhook_secret_name",
    "owner",
    "ordering",
)
IDENTITY = ("schema", "name")


def function_props(spec: FunctionSpec, owner: str) -> dict[str, Any]:
    """The provider's inputs for `spec` (preflight checks run in the stack's Installation, before this)."""
    return {
        "schema": spec.schema,
        "name": spec.name,
        "secret_name": spec.secret_name,
        "signer": spec.signer,
        # JSON text, not a map: Pulumi would turn 42 into 42.0 and drop nulls (canonical_claims).
        "claims": canonical_claims(spec.claims),
        "token_ttl_seconds": spec.token_ttl_seconds,
        "timeout_ms": spec.timeout_ms,
        "mode": spec.mode,
        "bind_request": spec.bind_request,
        "audience": spec.audience,
        "webhook_secret_name": spec.webhook_secret_name,
        "previous_webhook_secret_name": spec.previous_webhook_secret_name,
        "owner": owner,
        # Only when on: a stack that never turned it on sees no change in its state.
        **({"ordering": spec.ordering} if spec.ordering != DEFAULT_ORDERING else {}),
    }


def spec_from(props: dict[str, Any]) -> FunctionSpec:
    return FunctionSpec(
        schema=props["schema"],
        name=props["name"],
        secret_name=props["secret_name"],
        signer=props["signer"],
        # Older state holds a map; its floats are what that version installed, so it is kept as is.
        claims=claims_from_props(props["claims"]),
        token_ttl_seconds=int(props["token_ttl_seconds"]),
        timeout_ms=int(props["timeout_ms"]),
        # State written before delivery modes existed is the seed's direct mode.
        mode=props.get("mode", "direct"),
        # ... and its tokens were not bound to their requests.
        bind_request=props.get("bind_request", False),
        audience=props.get("audience", False),
        webhook_secret_name=props.get("webhook_secret_name"),
        previous_webhook_secret_name=props.get("previous_webhook_secret_name"),
        ordering=props.get("ordering", DEFAULT_ORDERING),
    )


def desired_state(spec: FunctionSpec, owner: str) -> dict[str, Any]:
    """What `read` must observe when the function is exactly as configured."""
    return {
        "body_sha256": body_sha256(render_body(spec)),
        "security_definer": True,
        "settings": list(SETTINGS),
        "executable_by": [],
        "managed_by": owner,
    }


@dataclass(frozen=True)
class InstalledFunction:
    oid: int
    definition: str
    comment: str | None
    state: dict[str, Any]


def _signature(spec: FunctionSpec) -> sql.Composed:
    return sql.SQL("{}.{}()").format(sql.Identifier(spec.schema), sql.Identifier(spec.name))


def find_function(cur: psycopg.Cursor, spec: FunctionSpec) -> InstalledFunction | None:
    cur.execute(
        """
        SELECT p.oid, pg_catalog.pg_get_functiondef(p.oid), pg_catalog.obj_description(p.oid, 'pg_proc'),
               p.prosrc, p.prosecdef, coalesce(p.proconfig, '{}'),
               (SELECT coalesce(array_agg(r ORDER BY r), '{}') FROM unnest(%(client_roles)s::text[]) AS r
                 WHERE EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = r)
                   AND pg_catalog.has_function_privilege(r, p.oid, 'EXECUTE')),
               EXISTS (SELECT FROM pg_catalog.aclexplode(coalesce(p.proacl, pg_catalog.acldefault('f', p.proowner))) a
                        WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE'),
               -- Every role granted EXECUTE but its owner: we grant it to none, so any is drift.
               (SELECT coalesce(array_agg(DISTINCT r.rolname ORDER BY r.rolname), '{}')
                  FROM pg_catalog.aclexplode(p.proacl) a JOIN pg_catalog.pg_roles r ON r.oid = a.grantee
                 WHERE a.grantee <> p.proowner)
          FROM pg_catalog.pg_proc p
          JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = %(schema)s AND p.proname = %(name)s AND p.pronargs = 0
        """,
        {"schema": spec.schema, "name": spec.name, "client_roles": list(CLIENT_ROLES)},
    )
    row = cur.fetchone()
    if row is None:
        return None
    oid, definition, comment, source, secdef, settings, client_executors, public_executes, grantees = row
    return InstalledFunction(
        oid=oid,
        definition=definition,
        comment=comment,
        state={
            "body_sha256": body_sha256(source),
            "security_definer": secdef,
            "settings": list(settings),
            # PUBLIC, the API roles (also through membership), and any role granted a privilege at all.
            "executable_by": (["PUBLIC"] if public_executes else []) + sorted(set(client_executors) | set(grantees)),
            "managed_by": owner_of(comment),
            # The whole CREATE FUNCTION as PostgreSQL prints it (volatility, cost, language, ...):
            # compared with what was installed, so a change no field above names is drift too.
            "definition_sha256": body_sha256(definition),
        },
    )


#: Every EXECUTE grant of the function `p` as [grantee or PUBLIC, grantable], but its owner's.
_GRANTS = """
SELECT coalesce(r.rolname, 'PUBLIC'), a.is_grantable
  FROM pg_catalog.aclexplode(coalesce(p.proacl, pg_catalog.acldefault('f', p.proowner))) a
  LEFT JOIN pg_catalog.pg_roles r ON r.oid = a.grantee
 WHERE a.privilege_type = 'EXECUTE' AND a.grantee <> p.proowner"""

#: The adoption record of the seed's function, copied from the catalog inside the server
#: (its definition may hold a hard-coded secret).
_RECORD = f"""
SELECT pg_catalog.jsonb_build_object(
         'definition', pg_catalog.pg_get_functiondef(p.oid),
         'grants', (SELECT coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_array(g.grantee, g.grantable)
                                                         ORDER BY g.grantee), '[]')
                      FROM ({_GRANTS}) AS g (grantee, grantable)),
         'comment', pg_catalog.obj_description(p.oid, 'pg_proc'))
  FROM pg_catalog.pg_proc p WHERE p.oid = %(oid)s"""


def _grants(cur: psycopg.Cursor, oid: int) -> list[list[Any]]:
    cur.execute(f"SELECT g.* FROM pg_catalog.pg_proc p, LATERAL ({_GRANTS}) AS g WHERE p.oid = %s", (oid,))
    return [[grantee, grantable] for grantee, grantable in cur.fetchall()]


def adoption_key(spec: FunctionSpec) -> list[str]:
    """The function's name in the adoption store, with its (empty) argument list as PostgreSQL names it."""
    return [spec.schema, f"{spec.name}()"]


def _grantee(name: str) -> sql.Composable:
    return sql.SQL("PUBLIC") if name == "PUBLIC" else sql.Identifier(name)


def _revoke_all(cur: psycopg.Cursor, spec: FunctionSpec, oid: int) -> None:
    roles = ["PUBLIC", *existing_roles(cur, CLIENT_ROLES), *(grantee for grantee, _ in _grants(cur, oid))]
    cur.execute(
        sql.SQL("REVOKE ALL ON FUNCTION {} FROM {}").format(
            _signature(spec), sql.SQL(", ").join(_grantee(role) for role in dict.fromkeys(roles))
        )
    )


def _comment(cur: psycopg.Cursor, spec: FunctionSpec, comment: str | None) -> None:
    cur.execute(sql.SQL("COMMENT ON FUNCTION {} IS {}").format(_signature(spec), sql.Literal(comment)))


def install(cur: psycopg.Cursor, spec: FunctionSpec, owner: str, instance: str | None = None) -> InstalledFunction:
    cur.execute(create_statement(spec))
    installed = find_function(cur, spec)
    assert installed is not None
    _revoke_all(cur, spec, installed.oid)
    _comment(cur, spec, marker(owner, instance))
    installed = find_function(cur, spec)
    assert installed is not None
    return installed


def restore(cur: psycopg.Cursor, spec: FunctionSpec, adopted: dict[str, Any]) -> None:
    """Put an adopted function back exactly from its record: body, settings, grants and comment.

    The definition runs from the store inside the server; `adopted` is the record as read back.
    """
    adoption.execute_definition(cur, adoption.FUNCTION, adoption_key(spec))
    installed = find_function(cur, spec)
    assert installed is not None
    _revoke_all(cur, spec, installed.oid)
    for grantee, grantable in adopted["grants"]:
        cur.execute(
            sql.SQL("GRANT EXECUTE ON FUNCTION {} TO {}{}").format(
                _signature(spec), _grantee(grantee), sql.SQL(" WITH GRANT OPTION" if grantable else "")
            )
        )
    _comment(cur, spec, adopted.get("comment"))  # Pulumi state drops null map values


def note_key_switches(cur: psycopg.Cursor, old: FunctionSpec, new: FunctionSpec) -> None:
    """Record, in the transaction that switches signing keys, until when the keys left behind signed
    what is still valid (key_rotation.py): the HS256 key for the token TTL; the whsec_ key for the
    Standard Webhooks timestamp tolerance, or less: each request's token expires with its TTL too."""
    ttl = max(old.token_ttl_seconds, new.token_ttl_seconds)
    key_rotation.note_switch(cur, old.secret_name, new.secret_name, ttl)
    whsec = min(ttl, key_rotation.WEBHOOK_TOLERANCE_SECONDS)
    key_rotation.note_switch(cur, old.webhook_secret_name, new.webhook_secret_name, whsec)


class SecureFunctionProvider(DatabaseProvider):
    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        spec = spec_from(news)
        failures: list[CheckFailure] = []
        with self.db.transaction() as cur:
            installed = find_function(cur, spec)
        name = f"{spec.qualified_name}()"
        if installed is not None and (reason := refusal("function", name, installed.comment, news["owner"])):
            failures.append(CheckFailure("name", reason))
        return CheckResult(news, failures)

    def create(self, props: dict[str, Any]) -> CreateResult:
        spec = spec_from(props)
        key = adoption_key(spec)
        with self.db.transaction(f"creating function {spec.qualified_name}()") as cur:
            existing = find_function(cur, spec)
            adopting = existing is not None and claim(
                "function", f"{spec.qualified_name}()", existing.comment, props["owner"]
            )
            adoption.lock(cur)
            # A re-create (after a refresh dropped our state, or a killed CLI) keeps the first record.
            adopted = adoption.recorded(cur, adoption.FUNCTION, key)
            if adopting and adopted is None:
                adoption.record_from_catalog(
                    cur, adoption.FUNCTION, key, props["owner"], _RECORD, {"oid": existing.oid}
                )
                adopted = adoption.recorded(cur, adoption.FUNCTION, key)
            installed = install(cur, spec, props["owner"], props.get("instance"))
        if adopting:  # only now: the replacement has committed
            pulumi.log.info(f"adopted existing function {spec.qualified_name}(); destroy will restore it")
        outs = {**props, **installed.state, "adopted": adopted}
        return CreateResult(
            f"{spec.qualified_name}()", {**outs, "installed_definition_sha256": outs["definition_sha256"]}
        )

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        spec = spec_from(props)
        with self.db.transaction() as cur:
            installed = find_function(cur, spec)
            if installed is None:
                adoption.lock(cur)
                owed = bool(props.get("adopted")) or adoption.recorded(cur, adoption.FUNCTION, adoption_key(spec))
        if installed is None and owed:
            # Gone, but the seed's function is still owed back: kept in the state as drift (`up`
            # re-creates ours), so that a refresh followed by destroy still restores it.
            return ReadResult(id_, {**props, "managed_by": None})
        if installed is None:
            return ReadResult(None, {})
        return ReadResult(id_, {**props, **installed.state})

    def diff(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        desired = desired_state(spec_from(news), news["owner"])
        changed = [key for key in INPUTS if olds.get(key) != news.get(key)]
        changed += [key for key, value in desired.items() if olds.get(key) != value]
        installed = olds.get("installed_definition_sha256")  # absent from state of older code
        if installed is not None and olds.get("definition_sha256") != installed:
            changed.append("definition")
        replaces = [key for key in IDENTITY if olds.get(key) != news.get(key)]
        return DiffResult(changes=bool(changed), replaces=replaces, delete_before_replace=False)

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        spec = spec_from(news)
        with self.db.transaction(f"updating function {spec.qualified_name}()") as cur:
            existing = find_function(cur, spec)
            if existing is not None:
                claim("function", f"{spec.qualified_name}()", existing.comment, news["owner"])
            name = f"function {spec.qualified_name}()"
            refuse_stale_instance(cur, news, name, existing.comment if existing else None)
            adoption.lock(cur)
            adopted = adoption.recorded_or_moved(
                cur, adoption.FUNCTION, adoption_key(spec), news["owner"], olds.get("adopted")
            )
            installed = install(cur, spec, news["owner"], news.get("instance"))
            if spec.mode == "direct":  # in at-least-once mode the reconciler signs (reconciler_provider.py)
                note_key_switches(cur, spec_from(olds), spec)
        outs = {**news, **installed.state, "adopted": adopted}
        return UpdateResult({**outs, "installed_definition_sha256": outs["definition_sha256"]})

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        """Restore what the database records as adopted, or drop ours; then forget the record.

        State written by older code holds the only copy of its record: it moves into the database first.
        """
        spec = spec_from(props)
        key = adoption_key(spec)
        with self.db.transaction(f"deleting function {spec.qualified_name}()") as cur:
            existing = find_function(cur, spec)
            if existing is not None and owner_of(existing.comment) != props["owner"]:
                return
            # Neither dropped nor given back while another instance of this stack holds the installation.
            name = f"function {spec.qualified_name}()"
            refuse_stale_instance(cur, props, name, existing.comment if existing else None)
            adoption.lock(cur)
            adopted = adoption.recorded_or_moved(cur, adoption.FUNCTION, key, props["owner"], props.get("adopted"))
            if adopted:  # even when ours was dropped out of band: destroy gives the seed's back
                restore(cur, spec, adopted)
                adoption.forget(cur, adoption.FUNCTION, key)
            elif existing is not None:
                cur.execute(sql.SQL("DROP FUNCTION {}").format(_signature(spec)))
        if adopted:
            pulumi.log.info(f"restored the adopted function {spec.qualified_name}()")


class SecureFunction(pulumi.dynamic.Resource, module="secure-webhooks", name="SecureFunction"):
    """The SECURITY DEFINER trigger function that signs a JWT and posts each row."""

    body_sha256: pulumi.Output[str]
    security_definer: pulumi.Output[bool]

    def __init__(
        self,
        name: str,
        spec: FunctionSpec,
        owner: str,
        opts: pulumi.ResourceOptions | None = None,
        instance: pulumi.Input[str] | None = None,
    ) -> None:
        props = {
            **function_props(spec, owner),
            "instance": instance_input(instance, opts),
            "body_sha256": None,
            "security_definer": None,
        }
        # The adopted definition may hold a hard-coded secret: keep it a Pulumi secret.
        opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=["adopted"]))
        super().__init__(SecureFunctionProvider(), name, props, opts)

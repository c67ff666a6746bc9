"""The stack's configuration contract, parsed and checked in one place.

Every rule here runs in the Pulumi program, before any resource is
registered, so bad input fails `pulumi preview` with a message that names the
config key and touches nothing in the database.
"""

from __future__ import annotations

import base64
import dataclasses
import hmac
import json
import math
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from secure_webhooks.configuration.config_errors import IN_CODE, NAMESPACE, ConfigError, KeyNames
from secure_webhooks.configuration.delivery_settings import DeliverySettings, check_delivery
from secure_webhooks.configuration.urls import UrlPolicyError, check_alert_url, check_base_url, check_path, join_url

#: PostgreSQL truncates identifiers longer than NAMEDATALEN - 1 bytes; a
#: silently truncated trigger name would make drift detection lie.
MAX_IDENTIFIER_BYTES = 63

#: RFC 7518 section 3.2: an HS256 key must be at least as long as the hash.
MIN_SECRET_BYTES = 32

MAX_TOKEN_TTL_SECONDS = 24 * 3600
MAX_TIMEOUT_MS = 300_000

SIGNERS = ("pgcrypto", "pgjwt")
#: pgcrypto: every Supabase project has it, and it signs without pgjwt's per-call SQL planning
#: (bench/README.md); pgjwt is deprecated on Supabase Postgres 17. Both mint byte-identical tokens.
DEFAULT_SIGNER = "pgcrypto"
EVENTS = ("INSERT", "UPDATE", "DELETE")

#: Claims the function computes itself for every token.
RESERVED_CLAIMS = ("exp", "iat")

DEFAULT_CLAIMS: dict[str, Any] = {"role": "service_role", "iss": "supabase", "sub": "orchestrator"}
DEFAULT_WEBHOOKS: tuple[dict[str, Any], ...] = (
    {
        "name": "orchestrator-ingest-interns-individual",
        "schema": "public",
        "table": "resumes",
        "path": "/ingest/interns/individual",
        "events": ["INSERT"],
    },
    {
        # The misspelling is the name of the live trigger; keeping it lets the
        # stack adopt (and on destroy restore) the existing webhook.
        "name": "orchestrator-injest-resumes-batch",
        "schema": "public",
        "table": "zip_archives",
        "path": "/ingest/resumes/batch",
        "events": ["INSERT"],
    },
)
WEBHOOK_KEYS = ("name", "schema", "table", "path", "events")


@dataclass(frozen=True)
class Webhook:
    """One configured webhook: rows of `schema.table` are POSTed to `url`."""

    name: str
    schema: str
    table: str
    path: str
    url: str
    events: tuple[str, ...] = ("INSERT",)

    @property
    def qualified_table(self) -> str:
        return f"{self.schema}.{self.table}"

    def resource_suffix(self, trigger_name: str) -> str:
        """The part of a trigger's Pulumi resource name that comes from config: `schema.table-trigger`.

        Distinct webhooks can render the same suffix (`x-y` on `t1` and `y` on `t1-x`); the
        engine would refuse the duplicate URN halfway through `up`, so check_webhooks refuses it.
        """
        return f"{self.qualified_table}-{trigger_name}"

    @property
    def triggers(self) -> tuple[tuple[str, str], ...]:
        """(event, trigger name) pairs: one trigger per event.

        The first event keeps the configured name, so an existing trigger of
        that name is adopted; further events get a suffix such as `-update`.
        """
        return tuple(
            (event, self.name if index == 0 else f"{self.name}-{event.lower()}")
            for index, event in enumerate(self.events)
        )


@dataclass(frozen=True)
class Settings:
    orchestrator_url: str
    webhooks: tuple[Webhook, ...]
    secret_name: str = "app_jwt_secret"
    token_ttl_seconds: int = 3600
    timeout_ms: int = 5000
    claims: Mapping[str, Any] = field(default_factory=lambda: dict(DEFAULT_CLAIMS))
    signer: str = DEFAULT_SIGNER
    production: bool = False
    manage_extensions: bool = True
    manages_secret: bool = False
    token_binding: bool = True
    token_audience: bool = False
    #: The Vault secret (whsec_...) signing Standard Webhooks headers; None: no such headers.
    webhook_secret_name: str | None = None
    manages_webhook_secret: bool = False
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    #: The instance id of a stack whose state is gone, whose database claim this stack takes over.
    replaces_instance: str | None = None
    #: Key rotation (docs/key-rotation.md): the Vault secrets of the staged keys (jwtSecretNext,
    #: webhookSecretNext; None: none staged), and which key signs, "current" or "next".
    next_secret_name: str | None = None
    next_webhook_secret_name: str | None = None
    signing_key: str = "current"
    #: How errors found later (by the providers' checks) name settings: as the reader wrote them.
    key_names: KeyNames = IN_CODE

    @property
    def signing_secret_name(self) -> str:
        """The Vault secret of the HS256 key that signs: the staged one once promoted."""
        if self.signing_key == "next" and self.next_secret_name is not None:
            return self.next_secret_name
        return self.secret_name

    @property
    def signing_webhook_secret_name(self) -> str | None:
        """The Vault secret of the whsec_ key whose signature comes first: the staged one once promoted."""
        if self.signing_key == "next" and self.next_webhook_secret_name is not None:
            return self.next_webhook_secret_name
        return self.webhook_secret_name

    @property
    def previous_webhook_secret_name(self) -> str | None:
        """Once a staged whsec_ key is promoted, the current one signs too (its signature second) until retired."""
        if self.signing_key == "next" and self.next_webhook_secret_name is not None:
            return self.webhook_secret_name
        return None


#: The Vault secret of a staged key is named after the current one's: `<name>_next`.
NEXT_SUFFIX = "_next"
SIGNING_KEYS = ("current", "next")


def rotation_partner(name: str) -> str:
    """The other Vault secret of a rotation whose signer reads `name`: the staged `<name>_next` beside
    the current key, or, once `<name>_next` is promoted, the current key's `<name>` it replaces.

    Derived from the name, as check_rotation names staged secrets, so the installed reconciler and
    `webhook-deliveries status` find it from the one name the signer reads, with no name of their own.
    """
    return name.removesuffix(NEXT_SUFFIX) if name.endswith(NEXT_SUFFIX) else name + NEXT_SUFFIX


def _key(name: str) -> str:
    return f"{NAMESPACE}:{name}"


def check_identifier(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(key, "must be a non-empty string")
    if "\x00" in value:
        raise ConfigError(key, "must not contain NUL characters")
    if len(value.encode()) > MAX_IDENTIFIER_BYTES:
        raise ConfigError(key, f"is longer than PostgreSQL's {MAX_IDENTIFIER_BYTES}-byte identifier limit")
    return value


def _check_int(key: str, value: Any, default: int, low: int, high: int) -> int:
    if value is None:
        return default
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            raise ConfigError(key, f"must be an integer, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, f"must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ConfigError(key, f"must be between {low} and {high}, got {value}")
    return value


def _check_bool(key: str, value: Any, default: bool = False) -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ConfigError(key, f"must be true or false, got {value!r}")


def _load_json(key: str, value: Any) -> Any:
    """Config objects arrive as JSON text from `pulumi config`, or already parsed in tests."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise ConfigError(key, f"is not valid JSON ({exc.msg})") from None
    return value


def _check_claim_value(key: str, value: Any) -> None:
    """Refuse what JSON cannot carry exactly: NaN, infinities, non-string keys."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(key, f"is {value!r}, which JSON cannot represent; use a finite number or a string")
    if isinstance(value, float) and value.is_integer() and abs(value) >= 2**53:
        # The Pulumi CLI reads a YAML integer beyond int64 as a 64-bit float: the digits are gone.
        raise ConfigError(
            key,
            f"is {value!r}, an integer that lost digits as a 64-bit float (Pulumi's YAML config keeps integers "
            "exact only within int64); set the claims as JSON text to keep it exact: "
            "pulumi config set secure-webhooks:claims '{...}'",
        )
    if isinstance(value, dict):
        for name, item in value.items():
            if not isinstance(name, str):
                raise ConfigError(key, f"has the non-string key {name!r}; JSON object keys are strings")
            _check_claim_value(f"{key}.{name}", item)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_claim_value(f"{key}[{index}]", item)
    elif value is not None and not isinstance(value, (str, bool, int, float)):
        raise ConfigError(key, f"is a {type(value).__name__}, not a JSON value")


def check_claims(value: Any, *, now: float | None = None) -> dict[str, Any]:
    """The configured claims, each value kept exactly (integers of any size stay integers, null stays null).

    They reach the providers as their canonical JSON text (components/secure_webhooks/signing/trigger_function.py,
    `canonical_claims`), never as a Pulumi map, whose numbers are floats and whose nulls are dropped.
    The Pulumi CLI itself keeps a YAML integer exact only within int64 (a bigger one reaches the
    program as a float, which is refused); set the claims as JSON text to carry any integer exactly.
    `nbf` is refused when it is not an integer or lies in the future: every token would be
    rejected until then (the trigger sets `iat` itself at signing time).
    """
    key = _key("claims")
    claims = _load_json(key, value)
    if claims is None:
        return dict(DEFAULT_CLAIMS)
    if not isinstance(claims, dict) or not claims:
        raise ConfigError(key, "must be a non-empty object of JWT claims, e.g. {role: service_role}")
    for name in claims:
        if name in RESERVED_CLAIMS:
            raise ConfigError(f"{key}.{name}", "is set by the trigger for every token; remove it")
    _check_claim_value(key, claims)
    if "nbf" in claims:
        nbf = claims["nbf"]
        if isinstance(nbf, bool) or not isinstance(nbf, int):
            raise ConfigError(f"{key}.nbf", f"must be an integer NumericDate (seconds since 1970), got {nbf!r}")
        current = time.time() if now is None else now
        if nbf > current:
            raise ConfigError(
                f"{key}.nbf",
                f"is {nbf}, {int(nbf - current)} s in the future: every token would be rejected until then; "
                "remove it (tokens are valid from their iat)",
            )
    return dict(claims)


def check_claims_against_binding(claims: Mapping[str, Any], token_binding: bool, token_audience: bool) -> None:
    """Refuse a configured claim that the trigger also writes: the token would carry the name twice."""
    added = (("jti", "body_sha256") if token_binding else ()) + (("aud",) if token_audience else ())
    for name in added:
        if name in claims:
            raise ConfigError(f"{_key('claims')}.{name}", "is set by the trigger for every token; remove it")


def check_jwt_secret(secret: str, setting: str = "jwtSecret") -> str:
    """Raise ConfigError (naming `setting`) when the Vault secret is too weak for HS256; never echoes it."""
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise ConfigError(
            _key(setting),
            f"is {len(secret.encode())} bytes; HS256 needs at least {MIN_SECRET_BYTES} (RFC 7518 section 3.2)",
        )
    return secret


#: Standard Webhooks: `whsec_` then the base64 of a 24 to 64 byte key.
MIN_WEBHOOK_KEY_BYTES, MAX_WEBHOOK_KEY_BYTES = 24, 64


def check_webhook_secret(secret: str, setting: str = "webhookSecret") -> str:
    """Raise ConfigError (naming `setting`) unless `secret` is a Standard Webhooks secret; never echoes it."""
    key = _key(setting)
    if not secret.startswith("whsec_"):
        raise ConfigError(key, "must be a Standard Webhooks secret: whsec_ followed by a base64 key")
    try:
        size = len(base64.b64decode(secret.removeprefix("whsec_"), validate=True))
    except ValueError:
        raise ConfigError(key, "is not whsec_ followed by valid base64") from None
    if not MIN_WEBHOOK_KEY_BYTES <= size <= MAX_WEBHOOK_KEY_BYTES:
        raise ConfigError(key, f"holds a {size}-byte key; use {MIN_WEBHOOK_KEY_BYTES} to {MAX_WEBHOOK_KEY_BYTES} bytes")
    return secret


#: Where the alert URL is set: a secret inside the delivery object (docs/configuration.md, "Alerts").
ALERT_URL_SETTING = "delivery.alertUrl"


def check_alert_url_secret(url: str, setting: str = ALERT_URL_SETTING, *, production: bool = False) -> str:
    """Raise ConfigError (naming `setting`) unless `url` may receive alerts; never echoes its path or query."""
    try:
        return check_alert_url(url, production=production)
    except UrlPolicyError as exc:
        raise ConfigError(_key(setting), str(exc)) from None


def _check_events(key: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ("INSERT",)
    if not isinstance(value, list) or not value:
        raise ConfigError(key, f"must be a non-empty list drawn from {list(EVENTS)}")
    events: list[str] = []
    for item in value:
        event = item.upper() if isinstance(item, str) else item
        if event not in EVENTS:
            raise ConfigError(key, f"has {item!r}; allowed events are {list(EVENTS)} (webhooks send rows)")
        if event in events:
            raise ConfigError(key, f"lists {event} twice")
        events.append(event)
    return tuple(events)


def _check_webhook(index: int, raw: Any, base_url: str) -> Webhook:
    key = f"{_key('webhooks')}[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(key, "must be an object with keys " + ", ".join(WEBHOOK_KEYS))
    unknown = sorted(set(raw) - set(WEBHOOK_KEYS))
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}", f"is not a webhook setting; expected one of {list(WEBHOOK_KEYS)}")
    for required in ("name", "table", "path"):
        if required not in raw:
            raise ConfigError(f"{key}.{required}", "is required")
    try:
        path = check_path(raw["path"])
    except UrlPolicyError as exc:
        raise ConfigError(f"{key}.path", str(exc)) from None
    webhook = Webhook(
        name=check_identifier(f"{key}.name", raw["name"]),
        schema=check_identifier(f"{key}.schema", raw.get("schema", "public")),
        table=check_identifier(f"{key}.table", raw["table"]),
        path=path,
        url=join_url(base_url, path),
        events=_check_events(f"{key}.events", raw.get("events")),
    )
    for _, trigger_name in webhook.triggers:
        check_identifier(f"{key}.name", trigger_name)
    return webhook


def check_webhooks(value: Any, base_url: str) -> tuple[Webhook, ...]:
    key = _key("webhooks")
    raw = _load_json(key, value)
    if raw is None:
        raw = [dict(webhook) for webhook in DEFAULT_WEBHOOKS]
    if not isinstance(raw, list) or not raw:
        raise ConfigError(key, "must be a non-empty list of {name, schema, table, path, events} objects")
    webhooks = tuple(_check_webhook(index, item, base_url) for index, item in enumerate(raw))
    seen: dict[tuple[str, str, str], int] = {}
    resources: dict[str, tuple[int, str, str]] = {}
    for index, webhook in enumerate(webhooks):
        for _, trigger_name in webhook.triggers:
            ident = (webhook.schema, webhook.table, trigger_name)
            if ident in seen:
                raise ConfigError(
                    f"{key}[{index}].name",
                    f"trigger {trigger_name!r} on {webhook.qualified_table} is already defined by {key}[{seen[ident]}]",
                )
            seen[ident] = index
            suffix = webhook.resource_suffix(trigger_name)
            if suffix in resources:
                other, other_trigger, other_table = resources[suffix]
                raise ConfigError(
                    f"{key}[{index}].name",
                    f"trigger {trigger_name!r} on {webhook.qualified_table} gets the same Pulumi resource name "
                    f"(...-{suffix}) as trigger {other_trigger!r} on {other_table} of {key}[{other}]; "
                    "rename one of them",
                )
            resources[suffix] = (index, trigger_name, webhook.qualified_table)
    return webhooks


def _check_webhook_signing(raw: Mapping[str, Any], token_binding: bool, secret_set: bool) -> str | None:
    """The Vault secret name signing Standard Webhooks headers, or None when they are off."""
    key = _key("standardWebhooks")
    if not _check_bool(key, raw.get("standardWebhooks")):
        if secret_set:
            raise ConfigError(_key("webhookSecret"), "is set but secure-webhooks:standardWebhooks is false")
        return None
    if not token_binding:
        raise ConfigError(key, "needs secure-webhooks:tokenBinding: the signature covers the webhook-id")
    name = raw.get("webhookSecretName") or "app_webhook_secret"
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise ConfigError(_key("webhookSecretName"), "must be a non-empty Vault secret name of at most 200 characters")
    return name


def check_staged_key(current: str | None, staged: str | None, setting: str) -> None:
    """Refuse a staged key equal to the current one: the rotation would change nothing (never echoes either).

    The same key in both is also what a retire looks like half done: jwtSecret was given the staged
    value, but jwtSecretNext was not removed.
    """
    if current is not None and staged is not None and hmac.compare_digest(current.encode(), staged.encode()):
        current_setting = setting.removesuffix("Next")
        raise ConfigError(
            _key(setting),
            f"holds the same key as secure-webhooks:{current_setting}. To finish retiring the old key, remove it: "
            f"`pulumi config rm secure-webhooks:{setting}` (and secure-webhooks:signingKey); to stage a new "
            "key, set a new one",
        )


def check_rotation(
    raw: Mapping[str, Any],
    *,
    secret_name: str,
    webhook_secret_name: str | None,
    jwt_secret_set: bool,
    webhook_secret_set: bool,
    jwt_next_set: bool,
    webhook_next_set: bool,
) -> tuple[str | None, str | None, str]:
    """(staged JWT key's Vault secret, staged whsec_ key's, which signs): the rotation's config steps.

    Only keys this stack keeps in the Vault rotate through config: a staged key sits beside the
    current one, so both must be the stack's.
    """
    if jwt_next_set and not jwt_secret_set:
        raise ConfigError(
            _key("jwtSecretNext"),
            "stages a key beside secure-webhooks:jwtSecret, which is not set: rotation through config needs "
            "the stack to keep the current key too (`pulumi config set --secret secure-webhooks:jwtSecret ...`)",
        )
    if webhook_next_set and not (webhook_secret_set and webhook_secret_name is not None):
        raise ConfigError(
            _key("webhookSecretNext"),
            "stages a key beside secure-webhooks:webhookSecret, which is not set (or standardWebhooks is off)",
        )
    signing = raw.get("signingKey") or "current"
    if signing not in SIGNING_KEYS:
        raise ConfigError(_key("signingKey"), f"must be one of {list(SIGNING_KEYS)}, got {signing!r}")
    if signing == "next" and not (jwt_next_set or webhook_next_set):
        raise ConfigError(
            _key("signingKey"),
            "is next, but no key is staged: stage one first "
            "(`pulumi config set --secret secure-webhooks:jwtSecretNext ...`, then `pulumi up`)",
        )
    next_name = f"{secret_name}{NEXT_SUFFIX}" if jwt_next_set else None
    next_webhook = f"{webhook_secret_name}{NEXT_SUFFIX}" if webhook_next_set and webhook_secret_name else None
    for key, name in (("secretName", next_name), ("webhookSecretName", next_webhook)):
        if name is not None and len(name) > 200:
            raise ConfigError(
                _key(key), f"is too long to name its staged key {name[:20]!r}... (at most 195 characters)"
            )
    return next_name, next_webhook, signing


def _check_instance(value: Any) -> str | None:
    if value is None:
        return None
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise ConfigError(
            _key("replacesInstance"), f"must be the instance id another stack's claim names (a UUID), got {value!r}"
        ) from None


def parse_settings(
    raw: Mapping[str, Any],
    *,
    jwt_secret_set: bool = False,
    webhook_secret_set: bool = False,
    key_names: KeyNames = IN_CODE,
    jwt_next_set: bool = False,
    webhook_next_set: bool = False,
) -> Settings:
    """Build Settings from raw values keyed by their short names (orchestratorUrl, ...).

    Errors name each setting as `key_names` says: by default as a program wrote it
    (`parse_settings(...)["timeoutMs"]`); read_stack_config asks for stack config keys.
    """
    try:
        settings = _parse_settings(raw, jwt_secret_set=jwt_secret_set, webhook_secret_set=webhook_secret_set)
        next_name, next_webhook, signing = check_rotation(
            raw,
            secret_name=settings.secret_name,
            webhook_secret_name=settings.webhook_secret_name,
            jwt_secret_set=jwt_secret_set,
            webhook_secret_set=webhook_secret_set,
            jwt_next_set=jwt_next_set,
            webhook_next_set=webhook_next_set,
        )
    except ConfigError as exc:
        raise exc.named_for(key_names) from None
    return dataclasses.replace(
        settings,
        key_names=key_names,
        next_secret_name=next_name,
        next_webhook_secret_name=next_webhook,
        signing_key=signing,
    )


def _parse_settings(raw: Mapping[str, Any], *, jwt_secret_set: bool, webhook_secret_set: bool) -> Settings:
    production = _check_bool(_key("production"), raw.get("production"))
    url_key = _key("orchestratorUrl")
    if raw.get("orchestratorUrl") is None:
        raise ConfigError(url_key, "is required: `pulumi config set orchestratorUrl https://...`")
    try:
        base_url = check_base_url(raw["orchestratorUrl"], production=production)
    except UrlPolicyError as exc:
        raise ConfigError(url_key, str(exc)) from None

    signer = raw.get("signer") or DEFAULT_SIGNER
    if signer not in SIGNERS:
        raise ConfigError(_key("signer"), f"must be one of {list(SIGNERS)}, got {signer!r}")

    secret_name = raw.get("secretName") or "app_jwt_secret"
    if not isinstance(secret_name, str) or not secret_name.strip() or len(secret_name) > 200:
        raise ConfigError(_key("secretName"), "must be a non-empty Vault secret name of at most 200 characters")

    token_binding = _check_bool(_key("tokenBinding"), raw.get("tokenBinding"), default=True)
    token_audience = _check_bool(_key("tokenAudience"), raw.get("tokenAudience"), default=False)
    claims = check_claims(raw.get("claims"))
    check_claims_against_binding(claims, token_binding, token_audience)
    return Settings(
        orchestrator_url=base_url,
        webhooks=check_webhooks(raw.get("webhooks"), base_url),
        secret_name=secret_name,
        token_ttl_seconds=_check_int(
            _key("tokenTtlSeconds"), raw.get("tokenTtlSeconds"), 3600, 1, MAX_TOKEN_TTL_SECONDS
        ),
        timeout_ms=_check_int(_key("timeoutMs"), raw.get("timeoutMs"), 5000, 1, MAX_TIMEOUT_MS),
        claims=claims,
        signer=signer,
        production=production,
        manage_extensions=_check_bool(_key("manageExtensions"), raw.get("manageExtensions"), default=True),
        manages_secret=jwt_secret_set,
        delivery=check_delivery(raw.get("delivery")),
        token_binding=token_binding,
        token_audience=token_audience,
        webhook_secret_name=_check_webhook_signing(raw, token_binding, webhook_secret_set),
        manages_webhook_secret=webhook_secret_set,
        replaces_instance=_check_instance(raw.get("replacesInstance")),
    )

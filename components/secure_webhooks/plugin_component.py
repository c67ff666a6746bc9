"""The component that other Pulumi languages use, through the plugin package in plugin/.

Pulumi's component provider host (`pulumi.provider.experimental`) infers the
package schema from `Webhooks`: its inputs from the TypedDict annotation of
`args`, its outputs from the class's annotated attributes. Its type is
`secure-webhooks:index:Webhooks`, deliberately not the token of the Python
component it wraps (`secure-webhooks:index:SecureWebhooks`): the two take
different arguments, and one token must mean one schema.

The package is named after the project, so its tokens sit beside the Python
component's. It reads no configuration: `secure-webhooks:*` keys in a consumer's
stack would be this package's provider config, and are ignored; the settings come
as inputs. Their keys are spelled exactly like those stack config keys (hence
camelCase), so the dict that arrives goes to `parse_settings` as it is (integers
aside, see `_exact_integers`) and a YAML program gets the same checks and messages
as a stack's config. The Vault values must arrive as Pulumi secrets: a
component's inputs are recorded in the stack's state, where a plain value would be
stored unencrypted.
"""

# No `from __future__ import annotations`: the host's analyzer reads the annotations as objects, not strings.
from typing import Any, NotRequired, TypedDict

import pulumi

from secure_webhooks.component import SecureWebhooks, SecureWebhooksArgs
from secure_webhooks.configuration.config_errors import NAMESPACE, STACK_CONFIG, ConfigError
from secure_webhooks.configuration.settings import parse_settings

#: The package's name in the schema: the first part of every type token it serves.
PACKAGE = "secure-webhooks"

#: Integers up to this size are exact in a float (a JSON number on the wire).
MAX_EXACT_INTEGER = 2**53


class Webhook(TypedDict):
    """One webhook: rows of `schema.table` are POSTed to the orchestrator URL joined with `path`."""

    name: str
    """The trigger's name; an existing trigger of that name is adopted and restored on destroy."""
    table: str
    schema: NotRequired[str]
    """Default public."""
    path: str
    """e.g. /ingest/resumes/batch"""
    events: NotRequired[list[str]]
    """INSERT, UPDATE, DELETE; default [INSERT]."""


class Delivery(TypedDict, total=False):
    """How events reach the orchestrator (docs/delivery.md); keys left out take their defaults."""

    mode: str
    """at-least-once (default) or direct."""
    maxAttempts: int
    retryInitialSeconds: int
    retryMaxSeconds: int
    retryMultiplier: float
    retryJitter: float
    keepDeliveredHours: int
    keepDeadHours: int
    schedule: str
    """auto, 'N seconds' or a cron expression."""
    batchSize: int
    receipts: str
    """off (default) or required: a 2xx counts only with a valid webhook-receipt."""
    ordering: str
    """none (default) or per-row: a row's events go out one at a time, in commit order."""
    orderingOnDead: str
    """block (default) or skip: whether a dead event holds its row's later events."""
    maxInFlight: int
    """Per endpoint: requests queued or in flight (default 100)."""
    maxPerSecond: int
    """Per endpoint: requests arriving at the receiver in any second (default 100)."""
    pauseAfterFailures: int
    """Consecutive failures that pause an endpoint (default 10)."""
    probeSeconds: int
    """A paused endpoint's probe interval (default 30)."""
    alertIntervalSeconds: int
    """Dead events are summarised in one alert per interval at most; default 300 (docs/operations.md, "Alerts")."""


class WebhooksArgs(TypedDict):
    """The `secure-webhooks:*` stack config keys, as component inputs (docs/configuration.md says what each means)."""

    orchestratorUrl: str
    """Base URL of the orchestrator: https, or http to loopback."""
    webhooks: NotRequired[list[Webhook]]
    """Default: the two webhooks of the reference stack."""
    secretName: NotRequired[str]
    """The Vault secret holding the HS256 key; default app_jwt_secret."""
    jwtSecret: NotRequired[pulumi.Input[str]]
    """A Pulumi secret: the HS256 key to keep in the Vault. Left out: the Vault secret is managed elsewhere."""
    tokenTtlSeconds: NotRequired[int]
    timeoutMs: NotRequired[int]
    claims: NotRequired[dict[str, Any]]
    signer: NotRequired[str]
    """pgcrypto (default) or pgjwt."""
    production: NotRequired[bool]
    manageExtensions: NotRequired[bool]
    """Default true, which needs the pulumi-resource-postgresql plugin; false only verifies the extensions."""
    delivery: NotRequired[Delivery]
    tokenBinding: NotRequired[bool]
    tokenAudience: NotRequired[bool]
    standardWebhooks: NotRequired[bool]
    webhookSecretName: NotRequired[str]
    webhookSecret: NotRequired[pulumi.Input[str]]
    """A Pulumi secret: the Standard Webhooks key (whsec_...) to keep in the Vault."""
    replacesInstance: NotRequired[str]
    """The instance id of a stack whose state is lost: this one takes its database claim over."""
    jwtSecretNext: NotRequired[pulumi.Input[str]]
    """A Pulumi secret: an HS256 key staged beside jwtSecret for a rotation (docs/key-rotation.md)."""
    webhookSecretNext: NotRequired[pulumi.Input[str]]
    """A Pulumi secret: a whsec_ key staged beside webhookSecret for a rotation."""
    signingKey: NotRequired[str]
    """current (default) or next: which key signs during a rotation."""
    alertUrl: NotRequired[pulumi.Input[str]]
    """A Pulumi secret: where alerts are POSTed (a Slack or Teams incoming webhook), kept in the Vault."""


def _key(name: str) -> str:
    return f"{NAMESPACE}:{name}"


#: Inputs that are Vault values, not settings.
SECRET_INPUTS = ("jwtSecret", "webhookSecret", "jwtSecretNext", "webhookSecretNext", "alertUrl")


def _exact_integers(value: Any) -> Any:
    """`value` with integral floats as ints.

    Numbers reach a provider as floats, and pulumi 3.260's host drops its own int conversion
    (ComponentProvider.map_input_properties overwrites it), so a program's 300 arrives as 300.0:
    parse_settings would refuse it for tokenTtlSeconds, and a claim would carry 5.0 instead of 5.
    """
    if isinstance(value, float) and value.is_integer() and abs(value) < MAX_EXACT_INTEGER:
        return int(value)
    if isinstance(value, dict):
        return {name: _exact_integers(item) for name, item in value.items()}
    if isinstance(value, list):
        return [_exact_integers(item) for item in value]
    return value


def secret_input(args: WebhooksArgs, key: str) -> pulumi.Output[str] | None:
    """The Vault value `key`, refused unless it came as a Pulumi secret (the state records the inputs)."""
    value = args.get(key)
    if value is None:
        return None
    if not isinstance(value, pulumi.Output):
        raise ConfigError(_key(key), "must be a Pulumi secret (e.g. a secret config value): the state records it")
    return pulumi.Output.secret(value)


def settings_input(args: WebhooksArgs) -> dict[str, Any]:
    """The settings among the inputs, as parse_settings takes them; each must be known when the program runs.

    They decide which resources exist (one trigger per webhook event), so an output of another
    resource cannot stand in for one.
    """
    raw: dict[str, Any] = {}
    for key, value in args.items():
        if key in SECRET_INPUTS:
            continue
        if isinstance(value, pulumi.Output):
            raise ConfigError(_key(key), "must be a plain value, not the output of another resource or a secret")
        raw[key] = _exact_integers(value)
    return raw


class Webhooks(pulumi.ComponentResource):
    """Signed (HS256 JWT) Supabase database webhooks: the SecureWebhooks component, for any Pulumi language."""

    function_name: pulumi.Output[str]
    """The signing trigger function, e.g. public.notify_orchestrator_secure()."""
    webhooks: pulumi.Output[list[dict[str, str]]]
    """One {trigger, event, table, url} per installed trigger."""
    delivery: pulumi.Output[dict[str, str]]
    """The delivery mode and, at least once, the outbox schema, view, pg_cron job and schedule."""
    instance: pulumi.Output[str]
    """This stack instance's id, held in the database's claim."""

    def __init__(self, name: str, args: WebhooksArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(f"{PACKAGE}:index:Webhooks", name, None, opts)
        try:
            jwt_secret, webhook_secret = secret_input(args, "jwtSecret"), secret_input(args, "webhookSecret")
            jwt_next, webhook_next = secret_input(args, "jwtSecretNext"), secret_input(args, "webhookSecretNext")
            alert_url = secret_input(args, "alertUrl")
            settings = parse_settings(
                settings_input(args),
                jwt_secret_set=jwt_secret is not None,
                webhook_secret_set=webhook_secret is not None,
                jwt_next_set=jwt_next is not None,
                webhook_next_set=webhook_next is not None,
                key_names=STACK_CONFIG,
            )
        except ConfigError as exc:
            # Worded as for stack config: input `x` is named by its key, secure-webhooks:x.
            raise pulumi.RunError(f"invalid configuration: {exc}") from None
        inner = SecureWebhooks(
            name,
            SecureWebhooksArgs(
                settings=settings,
                owner=f"{pulumi.get_project()}/{pulumi.get_stack()}",
                jwt_secret=jwt_secret,
                webhook_secret=webhook_secret,
                jwt_secret_next=jwt_next,
                webhook_secret_next=webhook_next,
                alert_url=alert_url,
            ),
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.function_name = inner.function_name
        self.webhooks = inner.webhooks
        self.delivery = inner.delivery
        self.instance = inner.instance
        self.register_outputs(
            {
                "function_name": self.function_name,
                "webhooks": self.webhooks,
                "delivery": self.delivery,
                "instance": self.instance,
            }
        )

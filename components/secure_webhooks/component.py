"""The SecureWebhooks component: everything one stack installs, as one unit."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_postgresql as postgresql

from secure_webhooks.configuration.settings import ALERT_URL_SETTING, Settings
from secure_webhooks.delivery.alerts import ALERT_URL_SECRET, CHANNEL
from secure_webhooks.delivery.outbox import DELIVERIES_VIEW
from secure_webhooks.delivery.outbox import SCHEMA as OUTBOX_SCHEMA
from secure_webhooks.delivery.outbox_provider import Outbox
from secure_webhooks.delivery.reconciler import JOB_NAME, ReconcilerSpec, Route
from secure_webhooks.delivery.reconciler_provider import Reconciler
from secure_webhooks.delivery.schedule_provider import ReconcilerSchedule
from secure_webhooks.installation.installation_provider import Installation, installation_props
from secure_webhooks.installation.preflight import EXTENSION_SCHEMA, preflight_props, required_extensions
from secure_webhooks.installation.trigger_provider import WebhookTrigger
from secure_webhooks.signing.function_provider import SecureFunction
from secure_webhooks.signing.trigger_function import FunctionSpec, key_id
from secure_webhooks.signing.vault_secret_provider import VaultSecret


@dataclass(frozen=True)
class SecureWebhooksArgs:
    settings: Settings
    #: Written into each object's COMMENT, e.g. "secure-webhooks/dev".
    owner: str
    #: The HS256 key to keep in the Vault; None when the secret is managed elsewhere.
    jwt_secret: pulumi.Input[str] | None = None
    #: The Standard Webhooks secret (whsec_...) to keep in the Vault; None when managed elsewhere or unused.
    webhook_secret: pulumi.Input[str] | None = None
    #: Keys staged beside those two for a rotation (docs/key-rotation.md); Settings.signing_key says
    #: which signs. None: nothing staged.
    jwt_secret_next: pulumi.Input[str] | None = None
    webhook_secret_next: pulumi.Input[str] | None = None
    #: Where alerts are posted (a Slack or Teams incoming webhook; at-least-once only), kept in Vault as a
    #: secret: its path or query is a credential. None: alerts go to the pg_notify channel only.
    alert_url: pulumi.Input[str] | None = None


def function_spec(settings: Settings) -> FunctionSpec:
    """The signer reads the Vault secret of whichever key signs (a promoted one, during a rotation)."""
    return FunctionSpec(
        secret_name=settings.signing_secret_name,
        signer=settings.signer,
        claims=dict(settings.claims),
        token_ttl_seconds=settings.token_ttl_seconds,
        timeout_ms=settings.timeout_ms,
        mode=settings.delivery.mode,
        bind_request=settings.token_binding,
        audience=settings.token_audience,
        webhook_secret_name=settings.signing_webhook_secret_name,
        previous_webhook_secret_name=settings.previous_webhook_secret_name,
        ordering=settings.delivery.ordering,
    )


def managed_secrets(args: SecureWebhooksArgs) -> list[tuple[str, str, pulumi.Input[str], str, str | None]]:
    """(resource suffix, Vault secret name, value, kind, config key of a staged key) of each secret this
    stack keeps in the Vault: the HS256 key and the Standard Webhooks secret, and the keys staged beside them."""
    settings = args.settings
    candidates = (
        ("secret", settings.secret_name, args.jwt_secret, "jwt", None),
        ("webhook-secret", settings.webhook_secret_name, args.webhook_secret, "webhook", None),
        ("secret-next", settings.next_secret_name, args.jwt_secret_next, "jwt", "jwtSecretNext"),
        (
            "webhook-secret-next",
            settings.next_webhook_secret_name,
            args.webhook_secret_next,
            "webhook",
            "webhookSecretNext",
        ),
        (
            "alert-url",
            ALERT_URL_SECRET,
            args.alert_url if settings.delivery.at_least_once else None,
            "alert_url",
            ALERT_URL_SETTING,
        ),
    )
    return [candidate for candidate in candidates if candidate[1] is not None and candidate[2] is not None]


def signing_output(args: SecureWebhooksArgs) -> pulumi.Output[dict[str, Any]]:
    """Which key signs, by config slot and key id, for the stack output and `preview` (no secret: the id
    is an HMAC of the key, docs/key-rotation.md). Ids only of keys this stack keeps."""
    settings = args.settings
    kids: dict[str, pulumi.Input[str | None]] = {}
    for output, value in (("currentKid", args.jwt_secret), ("nextKid", args.jwt_secret_next)):
        if value is not None:
            kids[output] = pulumi.Output.unsecret(pulumi.Output.from_input(value).apply(key_id))
    jwt_slot = "next" if settings.signing_secret_name != settings.secret_name else "current"
    webhook_slot = "next" if settings.previous_webhook_secret_name is not None else "current"
    # Output.all() of no keyword is a list: with no key kept here, no ids
    known = pulumi.Output.all(**kids) if kids else pulumi.Output.from_input({})
    return known.apply(
        lambda ids: {
            "jwtKey": jwt_slot,
            "jwtVaultSecret": settings.signing_secret_name,
            **({"jwtKid": ids.get(f"{jwt_slot}Kid")} if ids.get(f"{jwt_slot}Kid") else {}),
            **({"stagedJwtKid": ids["nextKid"]} if ids.get("nextKid") and jwt_slot == "current" else {}),
            **({"retiringJwtKid": ids["currentKid"]} if ids.get("currentKid") and jwt_slot == "next" else {}),
            **({"webhookKey": webhook_slot} if settings.webhook_secret_name is not None else {}),
        }
    )


def reconciler_spec(settings: Settings, spec: FunctionSpec) -> ReconcilerSpec:
    """The reconciler sends each webhook's events only to the URL configured here (delivery/reconciler.py)."""
    routes = tuple(
        Route(schema=webhook.schema, table=webhook.table, webhook=trigger_name, url=webhook.url)
        for webhook in settings.webhooks
        for _, trigger_name in webhook.triggers
    )
    return ReconcilerSpec(function=spec, delivery=settings.delivery, routes=routes)


def ordered_webhooks(settings: Settings) -> list[dict[str, str]]:
    """The webhooks whose tables preview checks for a primary key: all of them with per-row order."""
    if settings.delivery.ordering != "per-row":
        return []
    return [
        {"schema": w.schema, "table": w.table, "name": w.name, "key": settings.key_names.setting(f"webhooks[{i}]")}
        for i, w in enumerate(settings.webhooks)
    ]


def installation_inputs(args: SecureWebhooksArgs, spec: FunctionSpec) -> dict[str, Any]:
    """What the stack's Installation checks before any change: every object it will touch, and preflight."""
    managed_names = {secret_name for _, secret_name, _, _, _ in managed_secrets(args)}
    return installation_props(
        owner=args.owner,
        function_schema=spec.schema,
        function_name=spec.name,
        replaces_instance=args.settings.replaces_instance,
        triggers=[
            {"schema": webhook.schema, "table": webhook.table, "name": trigger_name}
            for webhook in args.settings.webhooks
            for _, trigger_name in webhook.triggers
        ],
        vault_secrets=[secret_name for _, secret_name, _, _, _ in managed_secrets(args)],
        outbox_schema=OUTBOX_SCHEMA if args.settings.delivery.at_least_once else None,
        cron_job=JOB_NAME if args.settings.delivery.at_least_once else None,
        preflight=preflight_props(
            signer=spec.signer,
            secret_name=spec.secret_name,
            secret_managed=spec.secret_name in managed_names,
            webhook_secret_name=spec.webhook_secret_name,
            webhook_secret_managed=spec.webhook_secret_name in managed_names,
            extensions_managed=args.settings.manage_extensions,
            key_names=args.settings.key_names,
            webhook_tables=[
                {"schema": w.schema, "table": w.table, "key": args.settings.key_names.setting(f"webhooks[{i}].table")}
                for i, w in enumerate(args.settings.webhooks)
            ],
            ordered_webhooks=ordered_webhooks(args.settings),
        ),
    )


class SecureWebhooks(pulumi.ComponentResource):
    """Extensions, the Vault secret (optional), the signing function and one trigger per webhook event."""

    function_name: pulumi.Output[str]
    webhooks: pulumi.Output[list[dict[str, str]]]
    delivery: pulumi.Output[dict[str, str]]
    #: This stack instance's id, minted at its first `up` and held in the database's claim.
    instance: pulumi.Output[str]
    #: Which key signs (docs/key-rotation.md): slot, Vault secret and key id, never a key.
    signing: pulumi.Output[dict[str, Any]]

    def __init__(self, name: str, args: SecureWebhooksArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("secure-webhooks:index:SecureWebhooks", name, None, opts)
        settings = args.settings
        if args.alert_url is not None:  # the reconciler reads the URL from Vault when it posts an alert
            delivery = dataclasses.replace(settings.delivery, alert_url_secret=ALERT_URL_SECRET)
            settings = dataclasses.replace(settings, delivery=delivery)
        spec = function_spec(settings)

        # First, and everything else depends on it: the checks that must pass and the claim this
        # stack instance must hold before any change (components/secure_webhooks/installation/installation_provider.py).
        installation = Installation(
            f"{name}-installation",
            installation_inputs(args, spec),
            opts=pulumi.ResourceOptions(parent=self),
        )

        def child(*depends: pulumi.Resource, **options: Any) -> pulumi.ResourceOptions:
            return pulumi.ResourceOptions(parent=self, depends_on=[installation, *depends], **options)

        # Extensions are shared with the rest of the database (Supabase itself
        # relies on pgcrypto and pg_net), so destroy leaves them installed. With
        # manageExtensions false they are only verified (see preflight).
        extensions: dict[str, postgresql.Extension] = {}
        for extension in required_extensions(settings.signer) if settings.manage_extensions else ():
            # pgjwt's control file requires pgcrypto.
            depends = [extensions["pgcrypto"]] if extension == "pgjwt" else []
            extensions[extension] = postgresql.Extension(
                f"{name}-{extension}",
                name=extension,
                schema=EXTENSION_SCHEMA,
                opts=child(*depends, retain_on_delete=True),
            )

        function_depends: list[pulumi.Resource] = list(extensions.values())
        # The Vault values this stack manages: the HS256 key, the Standard Webhooks secret, and any key
        # staged beside them for a rotation.
        for suffix, secret_name, value, kind, setting in managed_secrets(args):
            function_depends.append(
                VaultSecret(
                    f"{name}-{suffix}",
                    secret_name=secret_name,
                    value=value,
                    owner=args.owner,
                    kind=kind,
                    key_names=settings.key_names,
                    instance=installation.instance,
                    setting=setting,
                    opts=child(),
                )
            )

        if settings.delivery.at_least_once:
            # Created before the function switches to the outbox body, so no insert goes unrecorded.
            outbox = Outbox(f"{name}-outbox", owner=args.owner, instance=installation.instance, opts=child())
            reconciler = Reconciler(
                f"{name}-reconciler",
                spec=reconciler_spec(settings, spec),
                owner=args.owner,
                instance=installation.instance,
                opts=child(outbox, *function_depends),
            )
            function_depends.append(outbox)

        function = SecureFunction(
            f"{name}-function",
            spec=spec,
            owner=args.owner,
            instance=installation.instance,
            opts=child(*function_depends),
        )

        # Outputs come from the created resources, not from config, so a failed
        # `up` does not report a webhook (or function) that was never installed.
        outputs: list[pulumi.Output[dict[str, str]]] = []
        triggers: list[WebhookTrigger] = []
        for webhook in settings.webhooks:
            for event, trigger_name in webhook.triggers:
                trigger = WebhookTrigger(
                    f"{name}-{webhook.resource_suffix(trigger_name)}",
                    schema=webhook.schema,
                    table=webhook.table,
                    trigger_name=trigger_name,
                    event=event,
                    url=webhook.url,
                    function=spec,
                    owner=args.owner,
                    instance=installation.instance,
                    opts=child(function),
                )
                triggers.append(trigger)
                outputs.append(
                    trigger.url.apply(
                        lambda url, name=trigger_name, event=event, table=webhook.qualified_table: {
                            "trigger": name,
                            "event": event,
                            "table": table,
                            "url": url,
                        }
                    )
                )

        if settings.delivery.at_least_once:
            # After every trigger, so destroy deletes it first: its refusal while events wait comes
            # before any trigger is dropped or legacy webhook restored.
            schedule = ReconcilerSchedule(
                f"{name}-reconciler-schedule",
                schedule=settings.delivery.schedule,
                key_names=settings.key_names,
                owner=args.owner,
                instance=installation.instance,
                opts=child(reconciler, *triggers),
            )
            self.delivery = pulumi.Output.all(schedule.id, schedule.live_schedule).apply(
                lambda job: {
                    "mode": settings.delivery.mode,
                    "schema": OUTBOX_SCHEMA,
                    "view": f"{OUTBOX_SCHEMA}.{DELIVERIES_VIEW}",
                    "cronJob": JOB_NAME,
                    "schedule": job[1],
                    "alerts": {
                        "channel": CHANNEL,
                        "url": f"in Vault ({ALERT_URL_SECRET})" if settings.delivery.alert_url_secret else None,
                        "intervalSeconds": settings.delivery.alert_interval_seconds,
                    },
                }
            )
        else:
            self.delivery = pulumi.Output.from_input({"mode": settings.delivery.mode})

        self.function_name = function.id
        self.instance = installation.instance
        # After the function: a key is reported as signing once the function that signs with it is in.
        self.signing = pulumi.Output.all(function.id, signing_output(args)).apply(lambda done: done[1])
        self.webhooks = pulumi.Output.all(*outputs)
        self.register_outputs(
            {
                "function_name": self.function_name,
                "signer": settings.signer,
                "webhooks": self.webhooks,
                "delivery": self.delivery,
                "instance": self.instance,
                "signing": self.signing,
            }
        )

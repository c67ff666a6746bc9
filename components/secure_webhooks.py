"""The SecureWebhooks component: everything one stack installs, as one unit."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_postgresql as postgresql

from .function_provider import SecureFunction
from .outbox import DELIVERIES_VIEW
from .outbox import SCHEMA as OUTBOX_SCHEMA
from .outbox_provider import Outbox
from .preflight import EXTENSION_SCHEMA, required_extensions
from .reconciler import JOB_NAME, ReconcilerSpec
from .reconciler_provider import Reconciler
from .schedule_provider import ReconcilerSchedule
from .settings import Settings
from .trigger_function import FunctionSpec
from .trigger_provider import WebhookTrigger
from .vault_secret_provider import VaultSecret


@dataclass(frozen=True)
class SecureWebhooksArgs:
    settings: Settings
    #: Written into each object's COMMENT, e.g. "secure-webhooks/dev".
    owner: str
    #: The HS256 key to keep in the Vault; None when the secret is managed elsewhere.
    jwt_secret: pulumi.Input[str] | None = None
    #: The Standard Webhooks secret (whsec_...) to keep in the Vault; None when managed elsewhere or unused.
    webhook_secret: pulumi.Input[str] | None = None


def function_spec(settings: Settings) -> FunctionSpec:
    return FunctionSpec(
        secret_name=settings.secret_name,
        signer=settings.signer,
        claims=dict(settings.claims),
        token_ttl_seconds=settings.token_ttl_seconds,
        timeout_ms=settings.timeout_ms,
        mode=settings.delivery.mode,
        bind_request=settings.token_binding,
        audience=settings.token_audience,
        webhook_secret_name=settings.webhook_secret_name,
    )


class SecureWebhooks(pulumi.ComponentResource):
    """Extensions, the Vault secret (optional), the signing function and one trigger per webhook event."""

    function_name: pulumi.Output[str]
    webhooks: pulumi.Output[list[dict[str, str]]]
    delivery: pulumi.Output[dict[str, str]]

    def __init__(self, name: str, args: SecureWebhooksArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("secure-webhooks:index:SecureWebhooks", name, None, opts)
        settings = args.settings
        spec = function_spec(settings)

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
                opts=pulumi.ResourceOptions(parent=self, retain_on_delete=True, depends_on=depends),
            )

        function_depends: list[pulumi.Resource] = list(extensions.values())
        # The Vault values this stack manages: the HS256 key, and the Standard Webhooks secret.
        managed_secrets = (
            ("secret", settings.secret_name, args.jwt_secret, "jwt"),
            ("webhook-secret", settings.webhook_secret_name, args.webhook_secret, "webhook"),
        )
        for suffix, secret_name, value, kind in managed_secrets:
            if value is not None and secret_name is not None:
                function_depends.append(
                    VaultSecret(
                        f"{name}-{suffix}",
                        secret_name=secret_name,
                        value=value,
                        owner=args.owner,
                        kind=kind,
                        opts=pulumi.ResourceOptions(parent=self),
                    )
                )

        if settings.delivery.at_least_once:
            # Created before the function switches to the outbox body, so no insert goes unrecorded.
            outbox = Outbox(f"{name}-outbox", owner=args.owner, opts=pulumi.ResourceOptions(parent=self))
            reconciler = Reconciler(
                f"{name}-reconciler",
                spec=ReconcilerSpec(function=spec, delivery=settings.delivery),
                owner=args.owner,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[outbox, *function_depends]),
            )
            schedule = ReconcilerSchedule(
                f"{name}-reconciler-schedule",
                schedule=settings.delivery.schedule,
                owner=args.owner,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[reconciler]),
            )
            function_depends.append(outbox)
            self.delivery = pulumi.Output.all(schedule.id, schedule.live_schedule).apply(
                lambda job: {
                    "mode": settings.delivery.mode,
                    "schema": OUTBOX_SCHEMA,
                    "view": f"{OUTBOX_SCHEMA}.{DELIVERIES_VIEW}",
                    "cronJob": JOB_NAME,
                    "schedule": job[1],
                }
            )
        else:
            self.delivery = pulumi.Output.from_input({"mode": settings.delivery.mode})

        function = SecureFunction(
            f"{name}-function",
            spec=spec,
            owner=args.owner,
            secret_managed=args.jwt_secret is not None,
            webhook_secret_managed=args.webhook_secret is not None,
            extensions_managed=settings.manage_extensions,
            webhook_tables=[
                {"schema": webhook.schema, "table": webhook.table, "key": f"secure-webhooks:webhooks[{index}].table"}
                for index, webhook in enumerate(settings.webhooks)
            ],
            opts=pulumi.ResourceOptions(parent=self, depends_on=function_depends),
        )

        # Outputs come from the created resources, not from config, so a failed
        # `up` does not report a webhook (or function) that was never installed.
        outputs: list[pulumi.Output[dict[str, str]]] = []
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
                    opts=pulumi.ResourceOptions(parent=self, depends_on=[function]),
                )
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

        self.function_name = function.id
        self.webhooks = pulumi.Output.all(*outputs)
        self.register_outputs(
            {
                "function_name": self.function_name,
                "signer": settings.signer,
                "webhooks": self.webhooks,
                "delivery": self.delivery,
            }
        )

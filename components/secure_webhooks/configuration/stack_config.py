"""Reads the stack's Pulumi config into Settings (configuration/settings.py has the rules)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pulumi
from pulumi.runtime.config import is_config_secret

from secure_webhooks.configuration.config_errors import NAMESPACE, STACK_CONFIG, ConfigError
from secure_webhooks.configuration.settings import (
    ALERT_URL_SETTING,
    Settings,
    check_alert_url_secret,
    check_jwt_secret,
    check_staged_key,
    check_webhook_secret,
    parse_settings,
)

SETTING_KEYS = (
    "orchestratorUrl",
    "webhooks",
    "secretName",
    "tokenTtlSeconds",
    "timeoutMs",
    "claims",
    "signer",
    "production",
    "manageExtensions",
    "delivery",
    "tokenBinding",
    "tokenAudience",
    "standardWebhooks",
    "webhookSecretName",
    "replacesInstance",
    "signingKey",
)

#: Secrets we refuse to accept in plaintext config: they would sit unencrypted in Pulumi.<stack>.yaml.
SECRET_KEYS = (
    f"{NAMESPACE}:jwtSecret",
    f"{NAMESPACE}:webhookSecret",
    f"{NAMESPACE}:jwtSecretNext",
    f"{NAMESPACE}:webhookSecretNext",
    "postgresql:password",
)


@dataclass(frozen=True)
class ManagedSecrets:
    """The Vault values this stack manages, as Pulumi secrets (None: managed elsewhere)."""

    jwt: pulumi.Output[str] | None = None
    webhook: pulumi.Output[str] | None = None
    #: Keys staged for rotation (docs/key-rotation.md).
    jwt_next: pulumi.Output[str] | None = None
    webhook_next: pulumi.Output[str] | None = None
    #: The alert URL (delivery.alertUrl): its path or query is a credential, so it lives in Vault too.
    alert_url: pulumi.Output[str] | None = None


def _secret(value: str | None) -> pulumi.Output[str] | None:
    return pulumi.Output.secret(value) if value is not None else None


def split_alert_url(delivery: Any, delivery_is_secret: bool) -> tuple[Any, str | None]:
    """(the delivery object without alertUrl, the alert URL): the URL goes to Vault, never into Settings.

    `pulumi config set --secret --path secure-webhooks:delivery.alertUrl ...` encrypts that value in the
    stack file and makes the whole `delivery` key secret; a plain alertUrl is refused.
    """
    raw = delivery
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            return delivery, None  # check_delivery names the key
    if not isinstance(raw, dict) or "alertUrl" not in raw:
        return delivery, None
    key = f"{NAMESPACE}:{ALERT_URL_SETTING}"
    if not delivery_is_secret:
        raise ConfigError(key, f"must be set as a secret: `pulumi config set --secret --path {key} https://...`")
    url = raw["alertUrl"]
    if not isinstance(url, str):
        raise ConfigError(key, "must be a string: the URL of an incoming webhook")
    return {name: value for name, value in raw.items() if name != "alertUrl"}, url


def read_stack_config() -> tuple[Settings, ManagedSecrets]:
    """Settings plus the Vault values the stack manages, as Pulumi secrets.

    Raises pulumi.RunError, which the CLI prints as a one-line error without a
    stack trace, naming the offending key.
    """
    config = pulumi.Config(NAMESPACE)
    try:
        for key in SECRET_KEYS:
            if pulumi.runtime.get_config(key) is not None and not is_config_secret(key):
                raise ConfigError(key, f"must be set as a secret: `pulumi config set --secret {key} ...`")
        jwt_secret = config.get("jwtSecret")
        if jwt_secret is not None:
            check_jwt_secret(jwt_secret)
        webhook_secret = config.get("webhookSecret")
        if webhook_secret is not None:
            check_webhook_secret(webhook_secret)
        jwt_next = config.get("jwtSecretNext")
        if jwt_next is not None:
            check_jwt_secret(jwt_next, "jwtSecretNext")
        webhook_next = config.get("webhookSecretNext")
        if webhook_next is not None:
            check_webhook_secret(webhook_next, "webhookSecretNext")
        check_staged_key(jwt_secret, jwt_next, "jwtSecretNext")
        check_staged_key(webhook_secret, webhook_next, "webhookSecretNext")
        raw = {key: config.get(key) for key in SETTING_KEYS}
        raw["delivery"], alert_url = split_alert_url(raw["delivery"], is_config_secret(f"{NAMESPACE}:delivery"))
        settings = parse_settings(
            raw,
            jwt_secret_set=jwt_secret is not None,
            webhook_secret_set=webhook_secret is not None,
            jwt_next_set=jwt_next is not None,
            webhook_next_set=webhook_next is not None,
            key_names=STACK_CONFIG,
        )
        if alert_url is not None:
            check_alert_url_secret(alert_url, production=settings.production)
            if not settings.delivery.at_least_once:
                raise ConfigError(
                    f"{NAMESPACE}:{ALERT_URL_SETTING}", "needs secure-webhooks:delivery.mode at-least-once"
                )
    except ConfigError as exc:
        raise pulumi.RunError(f"invalid configuration: {exc}") from None
    return settings, ManagedSecrets(
        jwt=_secret(jwt_secret),
        webhook=_secret(webhook_secret),
        jwt_next=_secret(jwt_next),
        webhook_next=_secret(webhook_next),
        alert_url=_secret(alert_url),
    )

"""Reads the stack's Pulumi config into Settings (see components/settings.py for the rules)."""

from __future__ import annotations

import pulumi
from pulumi.runtime.config import is_config_secret

from components.settings import NAMESPACE, ConfigError, Settings, check_jwt_secret, parse_settings

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
)

#: Secrets we refuse to accept in plaintext config: they would sit unencrypted in Pulumi.<stack>.yaml.
SECRET_KEYS = (f"{NAMESPACE}:jwtSecret", "postgresql:password")


def read_stack_config() -> tuple[Settings, pulumi.Output[str] | None]:
    """Settings plus the JWT secret as a Pulumi secret (None when the Vault secret is managed elsewhere).

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
        settings = parse_settings({key: config.get(key) for key in SETTING_KEYS}, jwt_secret_set=jwt_secret is not None)
    except ConfigError as exc:
        raise pulumi.RunError(f"invalid configuration: {exc}") from None
    return settings, (pulumi.Output.secret(jwt_secret) if jwt_secret is not None else None)

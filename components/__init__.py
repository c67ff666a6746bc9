"""secure_webhooks: signed (HS256 JWT) Supabase database webhooks as one Pulumi component.

The source lives in the repository's components/ folder and installs as this
package (pyproject.toml maps it). A program composes it like any component:

    settings = parse_settings({"orchestratorUrl": "https://api.example.com", "webhooks": [...]})
    SecureWebhooks("webhooks", SecureWebhooksArgs(settings=settings, owner="team/prod"))

or reads the same `secure-webhooks:*` stack config keys as the reference
program with read_stack_config().
"""

from .config_errors import ConfigError
from .delivery_settings import DeliverySettings
from .secure_webhooks import SecureWebhooks, SecureWebhooksArgs
from .settings import Settings, Webhook, parse_settings
from .stack_config import ManagedSecrets, read_stack_config

__all__ = [
    "ConfigError",
    "DeliverySettings",
    "ManagedSecrets",
    "SecureWebhooks",
    "SecureWebhooksArgs",
    "Settings",
    "Webhook",
    "parse_settings",
    "read_stack_config",
]

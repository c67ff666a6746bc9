"""secure_webhooks: signed (HS256 JWT) Supabase database webhooks as one Pulumi component.

Each concept is a sub-package (configuration, signing, delivery, installation,
postgres); docs/design.md says which module owns each step. A program composes
it like any component:

    settings = parse_settings({"orchestratorUrl": "https://api.example.com", "webhooks": [...]})
    SecureWebhooks("webhooks", SecureWebhooksArgs(settings=settings, owner="team/prod"))

or reads the same `secure-webhooks:*` stack config keys as the reference
program with read_stack_config().
"""

from secure_webhooks.component import SecureWebhooks, SecureWebhooksArgs
from secure_webhooks.configuration.config_errors import ConfigError
from secure_webhooks.configuration.delivery_settings import DeliverySettings
from secure_webhooks.configuration.settings import Settings, Webhook, parse_settings
from secure_webhooks.configuration.stack_config import ManagedSecrets, read_stack_config
from secure_webhooks.former_modules import register as register_former_modules

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

register_former_modules(__name__)

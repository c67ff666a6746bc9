"""The flat module names of earlier versions, kept importable for the stacks those versions deployed.

A stack's state holds each dynamic provider pickled, and a pickle names every class by its module:
`secure_webhooks.outbox_provider` before the sub-packages, `components.outbox_provider` before the
package existed. Unpickling such a state imports those names, so each stays an alias of the module
that holds the code today. A resource's pickle moves to today's name whenever this version writes it
(tests/test_engine_stacks.py covers both steps).
"""

from __future__ import annotations

import importlib
import sys

#: Each former module (relative to its package) and where its code lives now (relative to secure_webhooks).
MOVED = {
    "adoption": "installation.adoption",
    "catalog": "postgres.catalog",
    "config_errors": "configuration.config_errors",
    "database": "postgres.database",
    "delivery_settings": "configuration.delivery_settings",
    "fingerprinted_provider": "postgres.fingerprinted_provider",
    "function_provider": "signing.function_provider",
    "installation_provider": "installation.installation_provider",
    "outbox": "delivery.outbox",
    "outbox_provider": "delivery.outbox_provider",
    "ownership": "installation.ownership",
    "preflight": "installation.preflight",
    "private_store": "installation.private_store",
    "reconciler": "delivery.reconciler",
    "reconciler_provider": "delivery.reconciler_provider",
    "schedule_provider": "delivery.schedule_provider",
    "secure_webhooks": "component",
    "settings": "configuration.settings",
    "stack_config": "configuration.stack_config",
    "trigger_function": "signing.trigger_function",
    "trigger_provider": "installation.trigger_provider",
    "urls": "configuration.urls",
    "vault_secret_provider": "signing.vault_secret_provider",
}


def register(package: str) -> None:
    """Make `package.<former module>` import today's module, for every moved module."""
    for former, current in MOVED.items():
        sys.modules.setdefault(f"{package}.{former}", importlib.import_module(f"secure_webhooks.{current}"))

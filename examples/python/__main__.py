"""A platform team's Supabase program: signed webhooks from secure-webhooks, plus a role of its own.

The webhooks are this program's code, not `secure-webhooks:*` stack config. Its own config:
`orchestratorUrl`, `jwtSecret` (set it with --secret) and `manageExtensions` (default true; false
where the pulumi-resource-postgresql plugin is unavailable). Both the component and
DeliveriesMonitor reach the database named by the `postgresql:*` keys.
"""

import pulumi
from deliveries_monitor import DeliveriesMonitor

from secure_webhooks import ConfigError, SecureWebhooks, SecureWebhooksArgs, parse_settings

config = pulumi.Config()
try:
    settings = parse_settings(
        {
            "orchestratorUrl": config.require("orchestratorUrl"),
            "webhooks": [
                {"name": "platform-resume-uploaded", "table": "resumes", "path": "/ingest/interns/individual"},
                {"name": "platform-archive-uploaded", "table": "zip_archives", "path": "/ingest/resumes/batch"},
            ],
            "secretName": "platform_webhooks_jwt",
            "tokenTtlSeconds": 300,
            "manageExtensions": config.get_bool("manageExtensions"),
        },
        jwt_secret_set=True,
    )
except ConfigError as exc:
    # Messages name each setting as written here, e.g. parse_settings(...)["tokenTtlSeconds"].
    raise pulumi.RunError(f"invalid webhook settings: {exc}") from None

webhooks = SecureWebhooks(
    "webhooks",
    SecureWebhooksArgs(
        settings=settings,
        owner=f"{pulumi.get_project()}/{pulumi.get_stack()}",
        jwt_secret=config.require_secret("jwtSecret"),
    ),
)

# Created once the whole component is, destroyed before it: the delivery log for a read-only
# role, through a function in a schema of this program's own (deliveries_monitor.py says why).
monitor = DeliveriesMonitor(
    "deliveries-monitor",
    role="webhook_monitor",
    schema="monitoring",
    source=webhooks.delivery["view"],
    opts=pulumi.ResourceOptions(depends_on=[webhooks]),
)

pulumi.export("webhooks", webhooks.webhooks)
pulumi.export("deliveriesView", webhooks.delivery["view"])
pulumi.export("monitoringRole", monitor.role)
pulumi.export("monitoringFunction", monitor.function)

"""secure-webhooks: signed (JWT) Supabase database webhooks, one Pulumi stack per environment."""

import pulumi

from secure_webhooks import SecureWebhooks, SecureWebhooksArgs, read_stack_config

settings, secrets = read_stack_config()

webhooks = SecureWebhooks(
    "secure-webhooks",
    SecureWebhooksArgs(
        settings=settings,
        owner=f"{pulumi.get_project()}/{pulumi.get_stack()}",
        jwt_secret=secrets.jwt,
        webhook_secret=secrets.webhook,
        jwt_secret_next=secrets.jwt_next,
        webhook_secret_next=secrets.webhook_next,
        alert_url=secrets.alert_url,
    ),
)

pulumi.export("function", webhooks.function_name)
pulumi.export("signer", settings.signer)
pulumi.export("claims", dict(settings.claims))
pulumi.export("tokenTtlSeconds", settings.token_ttl_seconds)
pulumi.export("webhooks", webhooks.webhooks)
pulumi.export("delivery", webhooks.delivery)
pulumi.export("instance", webhooks.instance)
pulumi.export("signing", webhooks.signing)

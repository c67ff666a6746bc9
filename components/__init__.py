"""Not a package to import: the folder of the shipped packages (secure_webhooks, webhook_deliveries,
webhook_verifier). Stacks deployed before `secure_webhooks` was a package name their providers
`components.<module>` in their state; this makes those names import today's modules."""

from secure_webhooks.former_modules import register

register(__name__)

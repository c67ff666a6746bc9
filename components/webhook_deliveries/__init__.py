"""`python -m webhook_deliveries`: the operator's view of at-least-once delivery.

It reads the same stack config as the Pulumi program (the `postgresql:*`
keys, through `pulumi config`), or a libpq conninfo given with `--dsn`, and
works only through the outbox's deliveries view and its SECURITY DEFINER
functions (`secure_webhooks.replay`, `secure_webhooks.purge`), so what it can
do is exactly what `postgres` and `service_role` may do in SQL. Its metrics (docs/metrics.md) read the
outbox's tables too, which both roles may read, so that a scrape reads through their indexes only.
"""

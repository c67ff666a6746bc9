"""Delivery: the outbox, the reconciler that turns its rows into signed pg_net requests, its pg_cron job."""

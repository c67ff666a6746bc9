"""Pulumi components that put signed Supabase database webhooks under management."""

"""Signing: the trigger function that signs each row's request, and the Vault secret it reads."""

"""Per-insert cost of the webhook variants on the local Supabase stand-in: `python -m bench`."""

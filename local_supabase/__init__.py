"""Local stand-in for the Supabase pieces secure-webhooks relies on (see DIFFERENCES.md)."""

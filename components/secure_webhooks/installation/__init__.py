"""Installation: the triggers on the tables, ownership of a database, adoption and exact rollback."""

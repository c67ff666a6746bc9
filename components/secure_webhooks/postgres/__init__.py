"""PostgreSQL plumbing shared by the providers: connections, catalog reads, fingerprinted resources."""

"""Configuration: stack config and Args become validated Settings; every error names its key."""

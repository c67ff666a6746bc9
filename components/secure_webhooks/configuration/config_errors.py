"""The one error type of configuration checks, shared by every module that parses a config key."""

from __future__ import annotations


class ConfigError(ValueError):
    """Invalid configuration; `key` is the full config key, e.g. secure-webhooks:timeoutMs."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem

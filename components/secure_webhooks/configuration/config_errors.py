"""The one error type of configuration checks, and how an error names the setting it is about.

A setting reaches us two ways: as a stack config key a Pulumi user set (`secure-webhooks:timeoutMs`),
or in code, as a `parse_settings` key or a `SecureWebhooksArgs` field a program wrote. An error must
name what its reader wrote, so the checks name settings by their stack config path and `KeyNames`
says how that path reads for the reader.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

NAMESPACE = "secure-webhooks"

#: Where a program passes the secrets that stack config holds as jwtSecret and webhookSecret.
_ARGS_FIELDS = {
    "jwtSecret": "SecureWebhooksArgs.jwt_secret",
    "webhookSecret": "SecureWebhooksArgs.webhook_secret",
    "jwtSecretNext": "SecureWebhooksArgs.jwt_secret_next",
    "webhookSecretNext": "SecureWebhooksArgs.webhook_secret_next",
    "delivery.alertUrl": "SecureWebhooksArgs.alert_url",
}
_CONFIG_KEY = re.compile(rf"{NAMESPACE}:([A-Za-z][A-Za-z0-9_]*(?:\[\d+\]|\.[A-Za-z][A-Za-z0-9_]*)*)")
#: Hints in a stack config user's terms: `pulumi config set [--secret] key ...`.
_CONFIG_HINT = re.compile(r"`pulumi config set (?:--secret )?(?:secure-webhooks:)?([A-Za-z]+)[^`]*`")


class ConfigError(ValueError):
    """Invalid configuration; `key` names the setting as its reader wrote it, e.g. secure-webhooks:timeoutMs."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem

    def named_for(self, names: KeyNames) -> ConfigError:
        """The same error with every setting it mentions named as `names` name them."""
        return ConfigError(names.rename(self.key), names.rename(self.problem))


@dataclass(frozen=True)
class KeyNames:
    """How messages name settings: `in_code` for a program's `parse_settings` keys and Args fields."""

    in_code: bool

    def setting(self, path: str) -> str:
        """A setting by its stack config path, e.g. `delivery.maxAttempts` or `webhooks[0].table`."""
        if not self.in_code:
            return f"{NAMESPACE}:{path}"
        if path in _ARGS_FIELDS:
            return _ARGS_FIELDS[path]
        parts = re.findall(r"\[(\d+)\]|([A-Za-z][A-Za-z0-9_]*)", path)
        return "parse_settings(...)" + "".join(f"[{index}]" if index else f'["{name}"]' for index, name in parts)

    def set_hint(self, path: str) -> str:
        """How the reader sets a setting, for the end of a message."""
        if not self.in_code:
            secret = "--secret " if path in _ARGS_FIELDS else ""
            return f"`pulumi config set {secret}{path} ...`"
        return f"pass {self.setting(path)}"

    def rename(self, text: str) -> str:
        """`text` with stack config keys and `pulumi config set` hints in the reader's terms."""
        if not self.in_code:
            return text
        text = _CONFIG_HINT.sub(lambda match: self.set_hint(match.group(1)), text)
        return _CONFIG_KEY.sub(lambda match: self.setting(match.group(1)), text)

    @property
    def prop(self) -> dict[str, str]:
        """What a provider's inputs carry so its `check` names settings the same way (nothing for
        stack config: states written before this existed see no change)."""
        return {"key_names": "code"} if self.in_code else {}

    @staticmethod
    def of(props: dict[str, object]) -> KeyNames:
        """The names a provider's inputs asked for."""
        return IN_CODE if props.get("key_names") == "code" else STACK_CONFIG


STACK_CONFIG = KeyNames(in_code=False)
IN_CODE = KeyNames(in_code=True)

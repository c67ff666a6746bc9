"""The plugin package's component (secure_webhooks.plugin_component): its schema and its inputs, without the engine.

The schema is what other languages see; it must offer exactly the `secure-webhooks:*` config keys
under the same names. tests/test_yaml_consumer.py runs it for real.
"""

from __future__ import annotations

import json
from typing import Any

import pulumi
import pytest
from pulumi.provider.experimental.component import ComponentProvider

from secure_webhooks.configuration.config_errors import ConfigError
from secure_webhooks.configuration.delivery_settings import KEYS as DELIVERY_KEYS
from secure_webhooks.configuration.settings import WEBHOOK_KEYS, parse_settings
from secure_webhooks.configuration.stack_config import SETTING_KEYS
from secure_webhooks.plugin_component import PACKAGE, SECRET_INPUTS, Webhooks, secret_input, settings_input


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return json.loads(ComponentProvider([Webhooks], PACKAGE, None, "0.1.0").schema)


def test_the_schema_offers_the_stack_config_keys_under_their_own_names(schema):
    assert schema["name"] == "secure-webhooks"
    assert list(schema["resources"]) == ["secure-webhooks:index:Webhooks"]
    component = schema["resources"]["secure-webhooks:index:Webhooks"]
    inputs = component["inputProperties"]
    assert set(inputs) == set(SETTING_KEYS) | set(SECRET_INPUTS)
    assert component["requiredInputs"] == ["orchestratorUrl"]
    # Settings decide which resources exist, so they are plain; the Vault values may be (secret) outputs.
    assert {key for key, spec in inputs.items() if not spec.get("plain")} == set(SECRET_INPUTS)
    assert set(component["properties"]) == {"functionName", "webhooks", "delivery", "instance"}
    types = schema["types"]
    assert set(types["secure-webhooks:index:Webhook"]["properties"]) == set(WEBHOOK_KEYS)
    assert set(types["secure-webhooks:index:Delivery"]["properties"]) == set(DELIVERY_KEYS)


def test_inputs_reach_parse_settings_as_stack_config_would():
    """Numbers arrive as floats on the wire; integers become ints again, claims included."""
    raw = settings_input(
        {
            "orchestratorUrl": "https://api.example.com",
            "tokenTtlSeconds": 300.0,
            "delivery": {"mode": "at-least-once", "maxAttempts": 3.0, "retryMultiplier": 2.5},
            "claims": {"role": "service_role", "tier": 2.0, "ratio": 0.5},
            "jwtSecret": pulumi.Output.secret("k" * 32),
        }
    )
    assert "jwtSecret" not in raw
    settings = parse_settings(raw, jwt_secret_set=True)
    assert settings.token_ttl_seconds == 300
    assert (settings.delivery.max_attempts, settings.delivery.retry_multiplier) == (3, 2.5)
    assert dict(settings.claims) == {"role": "service_role", "tier": 2, "ratio": 0.5}
    assert type(settings.claims["tier"]) is int


def test_a_setting_that_is_an_output_is_refused_by_its_config_key():
    with pytest.raises(ConfigError, match=r"^secure-webhooks:orchestratorUrl: must be a plain value"):
        settings_input({"orchestratorUrl": pulumi.Output.from_input("https://api.example.com")})


def test_a_vault_value_in_plaintext_is_refused_since_the_state_records_inputs():
    with pytest.raises(ConfigError, match=r"^secure-webhooks:jwtSecret: must be a Pulumi secret"):
        secret_input({"orchestratorUrl": "https://api.example.com", "jwtSecret": "k" * 32}, "jwtSecret")
    assert secret_input({"orchestratorUrl": "https://api.example.com"}, "jwtSecret") is None

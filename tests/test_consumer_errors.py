"""A program that passes settings in code reads errors in its own terms (issue 16 #3).

The same checks serve stack config and code; a stack config user reads `secure-webhooks:timeoutMs`,
a program reads the `parse_settings` key or the `SecureWebhooksArgs` field it wrote, and provider
checks at preview follow what the program used.
"""

from __future__ import annotations

import pytest

from secure_webhooks import ConfigError, parse_settings
from secure_webhooks.configuration.config_errors import IN_CODE, STACK_CONFIG, KeyNames
from secure_webhooks.installation.preflight import preflight_failures, preflight_props

BASE = {"orchestratorUrl": "https://api.example.com"}


@pytest.mark.parametrize(
    ("raw", "named", "mentions"),
    [
        (
            {"orchestratorUrl": None},
            'parse_settings(...)["orchestratorUrl"]',
            'pass parse_settings(...)["orchestratorUrl"]',
        ),
        ({"timeoutMs": "soon"}, 'parse_settings(...)["timeoutMs"]', None),
        ({"delivery": {"maxAttempts": 0}}, 'parse_settings(...)["delivery"]["maxAttempts"]', None),
        ({"webhooks": [{"name": "w", "path": "/x"}]}, 'parse_settings(...)["webhooks"][0]', None),
        ({"claims": {"jti": "fixed"}}, 'parse_settings(...)["claims"]["jti"]', None),
        (
            {"standardWebhooks": True, "tokenBinding": False},
            'parse_settings(...)["standardWebhooks"]',
            'parse_settings(...)["tokenBinding"]',
        ),
    ],
)
def test_parse_settings_names_the_key_the_program_wrote(raw, named, mentions):
    with pytest.raises(ConfigError) as info:
        parse_settings({**BASE, **raw})
    assert info.value.key.startswith(named), info.value
    assert "secure-webhooks:" not in str(info.value) and "pulumi config" not in str(info.value)
    if mentions:
        assert mentions in info.value.problem
    with pytest.raises(ConfigError) as as_config:
        parse_settings({**BASE, **raw}, key_names=STACK_CONFIG)
    assert as_config.value.key.startswith("secure-webhooks:")


def test_a_secret_passed_in_code_is_named_by_its_args_field():
    with pytest.raises(ConfigError) as info:
        parse_settings(BASE, webhook_secret_set=True)
    assert info.value.key == "SecureWebhooksArgs.webhook_secret"


def test_settings_remember_how_to_name_keys_for_the_providers():
    assert parse_settings(BASE).key_names == IN_CODE
    assert parse_settings(BASE, key_names=STACK_CONFIG).key_names == STACK_CONFIG
    # Stack config adds nothing to the providers' inputs, so states written before see no change.
    assert STACK_CONFIG.prop == {} and KeyNames.of({}) == STACK_CONFIG
    assert KeyNames.of(IN_CODE.prop) == IN_CODE


def test_preview_checks_name_the_program_s_keys_on_the_right_input(supabase_ready, postgres_conn):
    """Real catalog: a Vault secret and a table that do not exist (the extension case: test_providers.py)."""
    props = preflight_props(
        signer="pgcrypto",
        secret_name="no_such_secret",
        secret_managed=False,
        webhook_secret_name=None,
        webhook_secret_managed=False,
        extensions_managed=False,
        webhook_tables=[{"schema": "public", "table": "no_such_table", "key": IN_CODE.setting("webhooks[0].table")}],
        key_names=IN_CODE,
    )
    with postgres_conn.transaction(force_rollback=True), postgres_conn.cursor() as cur:
        failures = {failure.property: failure.reason for failure in preflight_failures(cur, props)}
    assert 'parse_settings(...)["secretName"]' in failures["secret_name"]
    assert "pass SecureWebhooksArgs.jwt_secret" in failures["secret_name"]
    assert failures["webhook_tables"].startswith('parse_settings(...)["webhooks"][0]["table"]: ')
    assert not [reason for reason in failures.values() if "secure-webhooks:" in reason or "pulumi config" in reason]

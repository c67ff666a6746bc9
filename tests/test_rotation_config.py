"""The rotation's config keys (docs/key-rotation.md): what each step makes the program install, and
every refusal naming the key the reader set, as a stack config key or as a program's argument."""

from __future__ import annotations

import pytest
from test_program import FUNCTION, RECONCILER, VAULT_SECRET, run_program, stack_config

from secure_webhooks.configuration.config_errors import IN_CODE, STACK_CONFIG
from secure_webhooks.configuration.settings import ConfigError, check_jwt_secret, check_staged_key, parse_settings

BASE = {"orchestratorUrl": "https://orchestrator.example.com", "standardWebhooks": True}
KEYS = {"jwt_secret_set": True, "webhook_secret_set": True}
CURRENT, STAGED = "c" * 40, "s" * 40


def settings(key_names=STACK_CONFIG, **raw):
    flags = {name: raw.pop(name) for name in ("jwt_next_set", "webhook_next_set") if name in raw}
    return parse_settings({**BASE, **raw}, key_names=key_names, **KEYS, **flags)


def test_each_step_signs_with_the_key_it_should():
    steady = settings()
    assert (steady.signing_secret_name, steady.signing_webhook_secret_name) == ("app_jwt_secret", "app_webhook_secret")
    assert steady.previous_webhook_secret_name is None and steady.next_secret_name is None

    staged = settings(jwt_next_set=True, webhook_next_set=True)
    assert (staged.next_secret_name, staged.next_webhook_secret_name) == (
        "app_jwt_secret_next",
        "app_webhook_secret_next",
    )
    assert staged.signing_secret_name == "app_jwt_secret"  # stage: still the current key

    promoted = settings(jwt_next_set=True, webhook_next_set=True, signingKey="next")
    assert promoted.signing_secret_name == "app_jwt_secret_next"
    assert promoted.signing_webhook_secret_name == "app_webhook_secret_next"
    assert promoted.previous_webhook_secret_name == "app_webhook_secret"  # both signatures until retire

    only_whsec = settings(webhook_next_set=True, signingKey="next", secretName="my_key")
    assert only_whsec.signing_secret_name == "my_key"
    assert only_whsec.signing_webhook_secret_name == "app_webhook_secret_next"


@pytest.mark.parametrize(
    ("raw", "key", "words"),
    [
        ({"signingKey": "new"}, "secure-webhooks:signingKey", "must be one of ['current', 'next']"),
        ({"signingKey": "next"}, "secure-webhooks:signingKey", "no key is staged"),
    ],
)
def test_bad_rotation_settings_name_their_key(raw, key, words):
    with pytest.raises(ConfigError) as refused:
        settings(**raw)
    assert refused.value.key == key and words in refused.value.problem


def test_a_staged_key_needs_the_stack_to_keep_the_current_one():
    with pytest.raises(ConfigError) as refused:
        parse_settings(BASE, key_names=STACK_CONFIG, jwt_next_set=True, webhook_secret_set=True)
    assert refused.value.key == "secure-webhooks:jwtSecretNext"
    assert "secure-webhooks:jwtSecret, which is not set" in refused.value.problem
    with pytest.raises(ConfigError) as refused:
        parse_settings(
            {**BASE, "standardWebhooks": False}, key_names=STACK_CONFIG, jwt_secret_set=True, webhook_next_set=True
        )
    assert refused.value.key == "secure-webhooks:webhookSecretNext"


def test_a_program_reads_the_names_it_wrote():
    with pytest.raises(ConfigError) as refused:
        settings(key_names=IN_CODE, signingKey="next")
    assert refused.value.key == 'parse_settings(...)["signingKey"]'
    with pytest.raises(ConfigError) as refused:
        parse_settings(BASE, key_names=IN_CODE, jwt_next_set=True)
    assert refused.value.key == "SecureWebhooksArgs.jwt_secret_next"


def test_a_staged_key_is_checked_like_the_current_one_and_never_echoed():
    with pytest.raises(ConfigError) as refused:
        check_jwt_secret("short", "jwtSecretNext")
    assert refused.value.key == "secure-webhooks:jwtSecretNext" and "short" not in str(refused.value)
    with pytest.raises(ConfigError) as refused:
        check_staged_key(CURRENT, CURRENT, "jwtSecretNext")
    assert refused.value.key == "secure-webhooks:jwtSecretNext"
    assert "pulumi config rm secure-webhooks:jwtSecretNext" in refused.value.problem and CURRENT not in str(
        refused.value
    )
    check_staged_key(CURRENT, STAGED, "jwtSecretNext")
    check_staged_key(CURRENT, None, "jwtSecretNext")


def rotation_program(**config: str):
    base = {**stack_config("dev"), "secure-webhooks:jwtSecret": CURRENT}
    full = {**base, **{f"secure-webhooks:{key}": value for key, value in config.items()}}
    secrets = tuple(key for key in full if key.endswith(("jwtSecret", "jwtSecretNext")))
    return run_program("dev", full, secrets)


def test_stage_adds_a_vault_secret_and_promote_points_the_signer_at_it():
    steady = rotation_program()
    assert [r.inputs["name"] for r in steady.of_type(VAULT_SECRET)] == ["app_jwt_secret"]

    staged = rotation_program(jwtSecretNext=STAGED)
    vault = {r.inputs["name"]: r.inputs for r in staged.of_type(VAULT_SECRET)}
    assert set(vault) == {"app_jwt_secret", "app_jwt_secret_next"}
    assert vault["app_jwt_secret_next"]["setting"] == "jwtSecretNext"
    assert "setting" not in vault["app_jwt_secret"]  # the current key's props are as before rotation existed

    promoted = rotation_program(jwtSecretNext=STAGED, signingKey="next")
    (function,) = promoted.of_type(FUNCTION)
    (reconciler,) = promoted.of_type(RECONCILER)
    assert function.inputs["secret_name"] == reconciler.inputs["secret_name"] == "app_jwt_secret_next"

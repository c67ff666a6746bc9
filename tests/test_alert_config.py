"""The alert URL's config (issue 17 part 3): a secret inside the delivery object, kept in Vault, checked
at preview with errors that name `secure-webhooks:delivery.alertUrl` and never echo its path or query."""

from __future__ import annotations

import json

import pulumi
import pytest
from test_program import RECONCILER, VAULT_SECRET, run_program, stack_config

from secure_webhooks.configuration.config_errors import IN_CODE, ConfigError
from secure_webhooks.configuration.delivery_settings import check_delivery
from secure_webhooks.configuration.settings import check_alert_url_secret, parse_settings
from secure_webhooks.delivery.alerts import ALERT_URL_SECRET

SLACK = "https://hooks.slack.com/services/T0CONF/B0CONF/confSecretToken1a2b3c"
TEAMS = (
    "https://prod-00.westeurope.logic.azure.com/workflows/abc/triggers/manual/paths/invoke?api-version=1&sig=s3cr3tSig"
)
DELIVERY = "secure-webhooks:delivery"


def test_a_secret_alert_url_goes_to_vault_and_nowhere_else():
    config = {
        **stack_config("prod"),
        DELIVERY: {"mode": "at-least-once", "alertIntervalSeconds": 60, "alertUrl": SLACK},
    }
    mocks = run_program("prod", config, secret_keys=(DELIVERY,))
    (vault_secret,) = mocks.of_type(VAULT_SECRET)
    assert vault_secret.inputs["name"] == ALERT_URL_SECRET and vault_secret.inputs["kind"] == "alert_url"
    assert vault_secret.inputs["setting"] == "delivery.alertUrl"
    assert vault_secret.inputs["secret"] == {
        pulumi.runtime.rpc._special_sig_key: pulumi.runtime.rpc._special_secret_sig,
        "value": SLACK,
    }
    (reconciler,) = mocks.of_type(RECONCILER)
    assert reconciler.inputs["delivery"]["alert_url_secret"] == ALERT_URL_SECRET
    assert reconciler.inputs["delivery"]["alert_interval_seconds"] == 60
    others = [r.inputs for r in mocks.resources if r.typ != VAULT_SECRET]
    assert "confSecretToken" not in json.dumps(others, default=str)


def test_without_an_alert_url_nothing_reads_one():
    mocks = run_program("prod", stack_config("prod"))
    assert not mocks.of_type(VAULT_SECRET)
    (reconciler,) = mocks.of_type(RECONCILER)
    assert reconciler.inputs["delivery"].get("alert_url_secret") is None
    assert reconciler.inputs["delivery"]["alert_interval_seconds"] == 300


@pytest.mark.parametrize(
    ("delivery", "secret", "message"),
    [
        ({"alertUrl": SLACK}, False, "secure-webhooks:delivery.alertUrl: must be set as a secret: `pulumi config set "),
        (
            {"alertUrl": SLACK.replace("https://hooks.slack.com", "http://hooks.slack.com")},
            True,
            "secure-webhooks:delivery.alertUrl: uses plain http to 'hooks.slack.com'",
        ),
        (
            {"alertUrl": SLACK.replace("hooks.slack.com", "abc.ngrok-free.app")},
            True,
            "secure-webhooks:delivery.alertUrl: production stacks require https to a host that is neither",
        ),
        ({"alertUrl": SLACK + "#x"}, True, "secure-webhooks:delivery.alertUrl: must not carry a fragment"),
        ({"alertUrl": 7}, True, "secure-webhooks:delivery.alertUrl: must be a string"),
        (
            {"mode": "direct", "alertUrl": SLACK},
            True,
            "secure-webhooks:delivery.alertUrl: needs secure-webhooks:delivery.mode at-least-once",
        ),
        ({"alertIntervalSeconds": 0}, False, "secure-webhooks:delivery.alertIntervalSeconds: must be between 1 and"),
    ],
)
def test_bad_alert_config_names_its_key_and_never_echoes_the_url(delivery, secret, message):
    with pytest.raises(pulumi.RunError) as info:
        run_program("prod", {**stack_config("prod"), DELIVERY: delivery}, (DELIVERY,) if secret else ())
    assert message in str(info.value)
    assert "confSecretToken" not in str(info.value) and "T0CONF" not in str(info.value)


def test_a_teams_url_keeps_its_query_and_errors_keep_it_out():
    assert check_alert_url_secret(TEAMS, production=True) == TEAMS
    with pytest.raises(ConfigError) as info:
        check_alert_url_secret(TEAMS.replace("https", "ftp"))
    assert str(info.value).startswith("secure-webhooks:delivery.alertUrl: must be an absolute http(s) URL")
    assert "s3cr3tSig" not in str(info.value) and "workflows" not in str(info.value)
    assert check_alert_url_secret("http://127.0.0.1:8080/hook", production=False) == "http://127.0.0.1:8080/hook"
    with pytest.raises(ConfigError, match="production stacks require https"):
        check_alert_url_secret("http://127.0.0.1:8080/hook", production=True)


def test_code_consumers_pass_the_url_beside_the_settings():
    """In code the URL is SecureWebhooksArgs.alert_url (a secret input), never a delivery setting."""
    with pytest.raises(ConfigError) as info:
        parse_settings({"orchestratorUrl": "https://o.example.com", "delivery": {"alertUrl": SLACK}})
    assert str(info.value) == (
        'parse_settings(...)["delivery"]: holds alertUrl, a secret: pass it as SecureWebhooksArgs.alert_url'
    )
    assert "confSecretToken" not in str(info.value)
    with pytest.raises(ConfigError) as bad:
        check_alert_url_secret("ftp://x.example.com/secret-path")
    assert str(bad.value.named_for(IN_CODE)).startswith("SecureWebhooksArgs.alert_url: must be an absolute http(s)")
    assert check_delivery({"alertIntervalSeconds": "30"}).alert_interval_seconds == 30

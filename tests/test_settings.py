"""The configuration contract: defaults, every validation error, and the URL policy."""

from pathlib import Path

import pytest
import yaml

from secure_webhooks.configuration.config_errors import STACK_CONFIG
from secure_webhooks.configuration.delivery_settings import DeliverySettings, check_delivery
from secure_webhooks.configuration.settings import (
    DEFAULT_CLAIMS,
    DEFAULT_WEBHOOKS,
    ConfigError,
    check_jwt_secret,
    check_webhook_secret,
    parse_settings,
)
from secure_webhooks.configuration.urls import is_tunnel_host

ROOT = Path(__file__).resolve().parent.parent
BASE = {"orchestratorUrl": "https://orchestrator.example.com"}


def settings(**raw):
    return parse_settings({**BASE, **raw}, key_names=STACK_CONFIG)


def error_of(**raw) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        settings(**raw)
    return info.value


def test_defaults_are_the_seed_plan():
    s = settings()
    assert [(w.name, w.qualified_table, w.url, w.events) for w in s.webhooks] == [
        (
            "orchestrator-ingest-interns-individual",
            "public.resumes",
            "https://orchestrator.example.com/ingest/interns/individual",
            ("INSERT",),
        ),
        (
            "orchestrator-injest-resumes-batch",
            "public.zip_archives",
            "https://orchestrator.example.com/ingest/resumes/batch",
            ("INSERT",),
        ),
    ]
    assert (s.secret_name, s.token_ttl_seconds, s.timeout_ms, s.signer) == ("app_jwt_secret", 3600, 5000, "pgcrypto")
    assert dict(s.claims) == {"role": "service_role", "iss": "supabase", "sub": "orchestrator"}
    assert s.production is False and s.manages_secret is False and s.manage_extensions is True


def test_pulumi_yaml_declares_the_same_defaults_as_the_code():
    declared = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]
    assert declared["webhooks"]["default"] == [dict(w) for w in DEFAULT_WEBHOOKS]
    assert declared["claims"]["default"] == DEFAULT_CLAIMS
    assert declared["secretName"]["default"] == "app_jwt_secret"
    assert declared["tokenTtlSeconds"]["default"] == 3600
    assert declared["timeoutMs"]["default"] == 5000
    assert declared["signer"]["default"] == "pgcrypto"
    assert declared["production"]["default"] is False
    assert declared["manageExtensions"]["default"] is True
    assert "default" not in declared["orchestratorUrl"]


def test_values_arrive_as_pulumi_config_strings():
    s = settings(
        webhooks='[{"name": "t", "table": "resumes", "path": "/x", "events": ["insert", "update"]}]',
        claims='{"role": "worker"}',
        tokenTtlSeconds="60",
        timeoutMs="250",
        production="false",
        signer="pgcrypto",
    )
    assert s.webhooks[0].events == ("INSERT", "UPDATE")
    assert s.webhooks[0].triggers == (("INSERT", "t"), ("UPDATE", "t-update"))
    assert (dict(s.claims), s.token_ttl_seconds, s.timeout_ms, s.signer) == ({"role": "worker"}, 60, 250, "pgcrypto")


def test_base_url_with_a_path_and_trailing_slash_joins_cleanly():
    s = parse_settings({"orchestratorUrl": "https://api.example.com/orchestrator/"})
    assert s.webhooks[0].url == "https://api.example.com/orchestrator/ingest/interns/individual"


@pytest.mark.parametrize(
    ("raw", "key", "fragment"),
    [
        ({"orchestratorUrl": None}, "secure-webhooks:orchestratorUrl", "is required"),
        ({"orchestratorUrl": "orchestrator.example.com"}, "secure-webhooks:orchestratorUrl", "absolute http(s)"),
        ({"orchestratorUrl": "ftp://example.com"}, "secure-webhooks:orchestratorUrl", "scheme 'ftp'"),
        ({"orchestratorUrl": "http://example.com"}, "secure-webhooks:orchestratorUrl", "plain http"),
        ({"orchestratorUrl": "https://u:p@example.com"}, "secure-webhooks:orchestratorUrl", "credentials"),
        ({"orchestratorUrl": "https://example.com/?a=1"}, "secure-webhooks:orchestratorUrl", "query string"),
        ({"orchestratorUrl": "https://example.com:99999"}, "secure-webhooks:orchestratorUrl", "invalid port"),
        ({"orchestratorUrl": "https://ex ample.com"}, "secure-webhooks:orchestratorUrl", "whitespace"),
        ({"signer": "rsa"}, "secure-webhooks:signer", "must be one of"),
        ({"secretName": ""}, None, None),  # empty means default
        ({"secretName": "x" * 201}, "secure-webhooks:secretName", "at most 200"),
        ({"tokenTtlSeconds": 0}, "secure-webhooks:tokenTtlSeconds", "between 1 and 86400"),
        ({"tokenTtlSeconds": "soon"}, "secure-webhooks:tokenTtlSeconds", "must be an integer"),
        ({"tokenTtlSeconds": True}, "secure-webhooks:tokenTtlSeconds", "must be an integer"),
        ({"timeoutMs": 300_001}, "secure-webhooks:timeoutMs", "between 1 and 300000"),
        ({"production": "yes"}, "secure-webhooks:production", "true or false"),
        ({"manageExtensions": "no"}, "secure-webhooks:manageExtensions", "true or false"),
        ({"claims": "[1]"}, "secure-webhooks:claims", "non-empty object"),
        ({"claims": "{bad"}, "secure-webhooks:claims", "not valid JSON"),
        ({"claims": {"exp": 1}}, "secure-webhooks:claims.exp", "set by the trigger"),
        ({"claims": {"iat": 1}}, "secure-webhooks:claims.iat", "set by the trigger"),
        ({"webhooks": []}, "secure-webhooks:webhooks", "non-empty list"),
        ({"webhooks": ["x"]}, "secure-webhooks:webhooks[0]", "must be an object"),
        ({"webhooks": [{"table": "t", "path": "/x"}]}, "secure-webhooks:webhooks[0].name", "is required"),
        ({"webhooks": [{"name": "n", "path": "/x"}]}, "secure-webhooks:webhooks[0].table", "is required"),
        ({"webhooks": [{"name": "n", "table": "t"}]}, "secure-webhooks:webhooks[0].path", "is required"),
        (
            {"webhooks": [{"name": "n", "table": "t", "path": "/x", "url": "u"}]},
            "secure-webhooks:webhooks[0].url",
            "not a webhook setting",
        ),
        ({"webhooks": [{"name": "n", "table": "t", "path": "x"}]}, "secure-webhooks:webhooks[0].path", "absolute"),
        ({"webhooks": [{"name": "n", "table": "t", "path": "//h/x"}]}, "secure-webhooks:webhooks[0].path", "single"),
        ({"webhooks": [{"name": "", "table": "t", "path": "/x"}]}, "secure-webhooks:webhooks[0].name", "non-empty"),
        (
            {"webhooks": [{"name": "n" * 64, "table": "t", "path": "/x"}]},
            "secure-webhooks:webhooks[0].name",
            "63-byte",
        ),
        (
            {"webhooks": [{"name": "n" * 60, "table": "t", "path": "/x", "events": ["INSERT", "DELETE"]}]},
            "secure-webhooks:webhooks[0].name",
            "63-byte",
        ),
        (
            {"webhooks": [{"name": "n", "table": "t\x00", "path": "/x"}]},
            "secure-webhooks:webhooks[0].table",
            "NUL",
        ),
        (
            {"webhooks": [{"name": "n", "table": "t", "path": "/x", "events": ["TRUNCATE"]}]},
            "secure-webhooks:webhooks[0].events",
            "allowed events",
        ),
        (
            {"webhooks": [{"name": "n", "table": "t", "path": "/x", "events": ["INSERT", "insert"]}]},
            "secure-webhooks:webhooks[0].events",
            "twice",
        ),
        (
            {"webhooks": [{"name": "n", "table": "t", "path": "/x", "events": []}]},
            "secure-webhooks:webhooks[0].events",
            "non-empty list",
        ),
        (
            {"webhooks": [{"name": "n", "table": "t", "path": "/a"}, {"name": "n", "table": "t", "path": "/b"}]},
            "secure-webhooks:webhooks[1].name",
            "already defined by secure-webhooks:webhooks[0]",
        ),
        (
            {
                "webhooks": [
                    {"name": "n", "table": "t", "path": "/a", "events": ["INSERT", "DELETE"]},
                    {"name": "n-delete", "table": "t", "path": "/b"},
                ]
            },
            "secure-webhooks:webhooks[1].name",
            "'n-delete' on public.t is already defined",
        ),
        (
            # Issue 10 #15: both render the resource name secure-webhooks-public.t1-x-y (a duplicate URN).
            {
                "webhooks": [
                    {"name": "x-y", "table": "t1", "path": "/a"},
                    {"name": "y", "table": "t1-x", "path": "/b"},
                ]
            },
            "secure-webhooks:webhooks[1].name",
            "resource name (...-public.t1-x-y) as trigger 'x-y' on public.t1 of secure-webhooks:webhooks[0]",
        ),
        (
            # ... also through a schema holding a dot, and through an event suffix.
            {
                "webhooks": [
                    {"name": "d", "schema": "a.b", "table": "c", "path": "/a", "events": ["INSERT", "DELETE"]},
                    {"name": "delete", "schema": "a", "table": "b.c-d", "path": "/b"},
                ]
            },
            "secure-webhooks:webhooks[1].name",
            "same Pulumi resource name (...-a.b.c-d-delete)",
        ),
    ],
)
def test_every_bad_value_names_its_key(raw, key, fragment):
    if key is None:
        assert settings(**raw).secret_name == "app_jwt_secret"
        return
    error = error_of(**raw)
    assert error.key == key
    assert fragment in error.problem
    assert str(error).startswith(key + ": ")


def test_same_trigger_name_on_different_tables_is_fine():
    s = settings(webhooks=[{"name": "n", "table": "a", "path": "/a"}, {"name": "n", "table": "b", "path": "/b"}])
    assert [w.qualified_table for w in s.webhooks] == ["public.a", "public.b"]


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("http://orchestrator.example.com", "plain http"),
        ("http://127.0.0.1:8080", "production stacks require https"),
        ("https://localhost", "loopback"),
        ("https://heliochromic-isenthalpic-aidyn.ngrok-free.dev", "tunnel host"),
        ("https://abc.trycloudflare.com", "tunnel host"),
    ],
)
def test_production_refuses_dev_urls(url, fragment):
    error = error_of(orchestratorUrl=url, production=True)
    assert error.key == "secure-webhooks:orchestratorUrl"
    assert fragment in error.problem


def test_non_production_allows_ngrok_and_loopback_http():
    assert settings(orchestratorUrl="https://heliochromic-isenthalpic-aidyn.ngrok-free.dev").production is False
    for url in ("http://127.0.0.1:9000", "http://localhost:9000", "http://[::1]:9000"):
        assert settings(orchestratorUrl=url).webhooks[0].url.startswith(url)


def test_tunnel_detection_matches_whole_labels_only():
    assert is_tunnel_host("x.ngrok-free.app")
    assert not is_tunnel_host("notngrok.io.example.com")
    assert not is_tunnel_host("myngrok.io")


def test_jwt_secret_must_be_32_bytes_and_is_never_echoed():
    with pytest.raises(ConfigError) as info:
        check_jwt_secret("short-secret-value")
    assert info.value.key == "secure-webhooks:jwtSecret"
    assert "18 bytes" in str(info.value) and "32" in str(info.value)
    assert "short-secret-value" not in str(info.value)
    assert check_jwt_secret("x" * 32) == "x" * 32


def test_delivery_defaults_to_at_least_once_and_pulumi_yaml_declares_the_code_defaults():
    delivery = settings().delivery
    assert delivery == DeliverySettings() and delivery.mode == "at-least-once"
    declared = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]["delivery"]["default"]
    assert check_delivery(declared) == delivery
    prod = yaml.safe_load((ROOT / "Pulumi.prod.yaml").read_text())["config"]["secure-webhooks:delivery"]
    assert prod["mode"] == "at-least-once"
    # Standard Webhooks' schedule reaches 24 h; ours does too, from seconds.
    delays = delivery.retry_delays()
    assert delays[0] == 5 and max(delays) == 86_400 and sum(delays) > 3 * 86_400


def test_endpoint_limits_have_defaults_and_take_config_strings():
    delivery = settings().delivery
    assert (delivery.max_in_flight, delivery.max_per_second) == (100, 100)
    assert (delivery.pause_after_failures, delivery.probe_seconds) == (10, 30)
    given = settings(delivery='{"maxInFlight": "5", "maxPerSecond": 7, "pauseAfterFailures": 3, "probeSeconds": 60}')
    limits = given.delivery
    assert (limits.max_in_flight, limits.max_per_second, limits.pause_after_failures, limits.probe_seconds) == (
        5,
        7,
        3,
        60,
    )


def test_delivery_accepts_partial_objects_and_json_text():
    assert settings(delivery='{"mode": "direct"}').delivery.mode == "direct"
    partial = settings(delivery={"maxAttempts": 3, "schedule": "10 seconds"}).delivery
    assert (partial.max_attempts, partial.schedule, partial.retry_initial_seconds) == (3, "10 seconds", 5)


@pytest.mark.parametrize(
    ("delivery", "key", "problem"),
    [
        ({"mode": "sometimes"}, "delivery.mode", "must be one of"),
        ({"retries": 3}, "delivery.retries", "is not a delivery setting"),
        ({"maxAttempts": 0}, "delivery.maxAttempts", "between 1 and 100"),
        ({"maxAttempts": "many"}, "delivery.maxAttempts", "must be a number"),
        ({"retryInitialSeconds": 60, "retryMaxSeconds": 30}, "delivery.retryMaxSeconds", "at least"),
        ({"retryJitter": 2}, "delivery.retryJitter", "between 0 and 1"),
        ({"retryMultiplier": True}, "delivery.retryMultiplier", "must be a number"),
        ({"schedule": "every second"}, "delivery.schedule", "5-field cron"),
        ({"schedule": "90 seconds"}, "delivery.schedule", "5-field cron"),
        ({"keepDeadHours": 0}, "delivery.keepDeadHours", "between 1"),
        ({"maxInFlight": 0}, "delivery.maxInFlight", "between 1 and 10000"),
        ({"maxInFlight": 2.5}, "delivery.maxInFlight", "must be an integer"),
        ({"maxPerSecond": "fast"}, "delivery.maxPerSecond", "must be a number"),
        ({"maxPerSecond": 10_001}, "delivery.maxPerSecond", "between 1 and 10000"),
        ({"pauseAfterFailures": 0}, "delivery.pauseAfterFailures", "between 1 and 1000"),
        ({"pauseAfterFailures": True}, "delivery.pauseAfterFailures", "must be an integer"),
        ({"probeSeconds": 0}, "delivery.probeSeconds", "between 1 and 3600"),
        ("[1, 2]", "delivery", "must be an object"),
        ("{nope", "delivery", "not valid JSON"),
    ],
)
def test_delivery_errors_name_their_key(delivery, key, problem):
    error = error_of(delivery=delivery)
    assert error.key == f"secure-webhooks:{key}" and problem in error.problem


def test_tokens_are_bound_by_default_and_aud_is_opt_in():
    s = settings()
    assert (s.token_binding, s.token_audience) == (True, False)
    assert settings(tokenAudience="true", tokenBinding="false").token_audience is True
    assert error_of(tokenAudience="maybe").key == "secure-webhooks:tokenAudience"
    declared = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]
    assert (declared["tokenBinding"]["default"], declared["tokenAudience"]["default"]) == (True, False)
    prod = yaml.safe_load((ROOT / "Pulumi.prod.yaml").read_text())["config"]
    assert prod["secure-webhooks:tokenTtlSeconds"] == "300"


WHSEC = "whsec_" + "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3"  # base64 of a 24-byte key


def test_standard_webhooks_are_opt_in_and_need_binding():
    assert settings().webhook_secret_name is None
    assert settings(standardWebhooks="true").webhook_secret_name == "app_webhook_secret"
    assert settings(standardWebhooks=True, webhookSecretName="hooks").webhook_secret_name == "hooks"
    assert error_of(standardWebhooks=True, tokenBinding=False).key == "secure-webhooks:standardWebhooks"
    with pytest.raises(ConfigError) as info:
        parse_settings(BASE, webhook_secret_set=True, key_names=STACK_CONFIG)
    assert info.value.key == "secure-webhooks:webhookSecret"


@pytest.mark.parametrize(
    ("secret", "problem"),
    [
        ("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3", "must be a Standard Webhooks secret"),
        ("whsec_not base64!", "not whsec_ followed by valid base64"),
        ("whsec_c2hvcnQ=", "holds a 5-byte key"),
    ],
)
def test_webhook_secret_errors_never_echo_it(secret, problem):
    with pytest.raises(ConfigError) as info:
        check_webhook_secret(secret)
    assert info.value.key == "secure-webhooks:webhookSecret" and problem in info.value.problem
    assert secret.removeprefix("whsec_") not in str(info.value)


def test_a_valid_webhook_secret_passes():
    assert check_webhook_secret(WHSEC) == WHSEC


URL_KEY = "secure-webhooks:orchestratorUrl"


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9000?", "https://orchestrator.example.com#", "https://o.example.com/a?"]
)
def test_an_empty_query_or_fragment_is_refused(url):
    """Issue 10 #9: `http://host?` would turn every webhook path into a query string."""
    error = error_of(orchestratorUrl=url)
    assert error.key == URL_KEY and "query string or fragment" in error.problem


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("https://abc.ngrok-free.dev.", "tunnel host"),
        ("https://xyz.trycloudflare.com.", "tunnel host"),
        ("https://ABC.NGROK-FREE.DEV", "tunnel host"),
        ("https://127.1", "loopback"),
        ("https://2130706433", "loopback"),
        ("https://0x7f000001", "loopback"),
        ("https://0177.0.0.1", "loopback"),
        ("https://[::ffff:127.0.0.1]", "loopback"),
        ("https://0.0.0.0", "loopback"),
        ("https://[::]", "loopback"),
        ("https://localhost.", "loopback"),
        ("https://\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54", "loopback"),  # fullwidth, IDNA
    ],
)
def test_production_guard_checks_the_normalised_host(url, fragment):
    """Issue 10 #10: trailing dots, case, IDNA, inet_aton shorthand and IPv4-mapped IPv6."""
    error = error_of(orchestratorUrl=url, production=True)
    assert error.key == URL_KEY and fragment in error.problem


def test_plain_http_rule_uses_the_same_normalised_host():
    for url in ("http://127.1:9000", "http://[::ffff:127.0.0.1]:9000", "http://localhost.:9000"):
        assert settings(orchestratorUrl=url).webhooks[0].url == url + "/ingest/interns/individual"
    for url in ("http://example.com.", "http://127.0.0.1.example.com", "http://256.1"):
        assert "plain http" in error_of(orchestratorUrl=url).problem
    assert "empty label" in error_of(orchestratorUrl="https://a..example.com").problem


def test_non_ascii_hosts_and_paths_are_encoded_and_nul_is_refused_naming_the_key():
    """Issue 10 #11: pg_net/libcurl get an ASCII URL; a NUL never reaches `up`."""
    s = settings(
        orchestratorUrl="https://bücher.example/ü/",
        webhooks=[{"name": "n", "table": "t", "path": "/ingest/résumé%20x"}],
    )
    assert s.webhooks[0].path == "/ingest/r%C3%A9sum%C3%A9%20x"
    assert s.webhooks[0].url == "https://xn--bcher-kva.example/%C3%BC/ingest/r%C3%A9sum%C3%A9%20x"
    for path, problem in (("/a\x00b", "NUL"), ("/a\x7fb", "control"), ("/100%", "%XX")):
        error = error_of(
            webhooks=[{"name": "n", "table": "t", "path": "/ok"}, {"name": "m", "table": "t", "path": path}]
        )
        assert error.key == "secure-webhooks:webhooks[1].path" and problem in error.problem
    error = error_of(orchestratorUrl="https://o.example.com/a\x00")
    assert error.key == URL_KEY and "NUL" in error.problem


#: Characters libcurl refuses in a host name (pg_net then refuses every request of the webhook).
CURL_REFUSED_HOST_CHARACTERS = "!*$&'(),;=^{}`\"<>\\+"


@pytest.mark.parametrize("production", [False, True])
@pytest.mark.parametrize("character", CURL_REFUSED_HOST_CHARACTERS)
def test_a_host_pg_net_would_refuse_is_refused_at_preview_naming_the_key(character, production):
    """Issue 15 #1: such a host used to pass config and then fail every attempt of its webhook."""
    error = error_of(orchestratorUrl=f"https://orch{character}estrator.example.com", production=production)
    assert error.key == URL_KEY and "pg_net (libcurl) would refuse" in error.problem

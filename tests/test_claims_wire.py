"""Claims cross Pulumi's wire exactly (issue 10 #8), and state written by older versions still reads.

Pulumi carries a resource input map's numbers as floats and drops its null values, so the
program hands the providers the claims as their canonical JSON text. No database needed: the
rendered bodies are what gets installed and compared with the catalog for drift.
"""

from __future__ import annotations

import json

import pytest
from google.protobuf import struct_pb2
from providers import OWNER, as_stored
from pulumi.runtime import rpc

from secure_webhooks.configuration.config_errors import STACK_CONFIG
from secure_webhooks.configuration.delivery_settings import DeliverySettings
from secure_webhooks.configuration.settings import ConfigError, parse_settings
from secure_webhooks.delivery.reconciler import ReconcilerSpec, function_sources, sources_sha256
from secure_webhooks.delivery.reconciler_provider import reconciler_props, reconciler_spec_from
from secure_webhooks.signing.function_provider import SecureFunctionProvider, desired_state, function_props, spec_from
from secure_webhooks.signing.trigger_function import FunctionSpec, body_sha256, render_body

CLAIMS = {
    "org_id": 42,
    "big": 12345678901234567890123,
    "ratio": 1.5,
    "revoked": None,
    "nested": {"n": 7, "none": None, "list": [1, 2.25, None]},
    "role": "worker",
}


def over_the_wire(props: dict) -> dict:
    """What a dynamic provider receives: a protobuf Struct (numbers are doubles), nulls in maps dropped."""
    struct = struct_pb2.Struct()
    struct.update(props)
    return as_stored(rpc.deserialize_properties(struct))


@pytest.mark.parametrize("mode", ["direct", "at-least-once"])
def test_claims_reach_the_provider_exactly(mode):
    spec = FunctionSpec(claims=CLAIMS, mode=mode)
    props = function_props(spec, OWNER)
    assert props["claims"] == json.dumps(CLAIMS, sort_keys=True, separators=(",", ":"))
    received = spec_from(over_the_wire(props))
    assert received.claims == CLAIMS
    assert all(type(received.claims[k]) is type(v) for k, v in CLAIMS.items())
    assert render_body(received) == render_body(spec)


def test_the_direct_body_signs_integers_as_integers():
    body = render_body(spec_from(over_the_wire(function_props(FunctionSpec(claims=CLAIMS), OWNER))))
    assert '"big":12345678901234567890123' in body and '"org_id":42,' in body and '"revoked":null' in body
    assert "42.0" not in body and "e+22" not in body


def test_the_reconciler_renders_the_same_claims_over_the_wire():
    spec = ReconcilerSpec(function=FunctionSpec(claims=CLAIMS, mode="at-least-once"), delivery=DeliverySettings())
    props = reconciler_props(spec, OWNER)
    received = reconciler_spec_from(over_the_wire(props))
    assert received.function.claims == CLAIMS
    assert function_sources(received)["reconcile"][2] == function_sources(spec)["reconcile"][2]
    assert '"org_id":42,' in function_sources(received)["reconcile"][2]
    assert sources_sha256(received) == props["sources_sha256"]


def test_state_written_by_older_versions_holds_a_map_and_still_reads():
    """Old state: claims as a map, with the floats that version installed. Its body still compares
    equal (no false drift on refresh), and the new program's text is a change that re-renders exactly."""
    old_props = {**function_props(FunctionSpec(), OWNER), "claims": {"org_id": 42.0, "role": "worker"}}
    old_spec = spec_from(old_props)
    assert old_spec.claims == {"org_id": 42.0, "role": "worker"}
    assert '"org_id":42.0' in render_body(old_spec)  # exactly what the old version installed
    new_props = function_props(FunctionSpec(claims={"org_id": 42, "role": "worker"}), OWNER)
    olds = {**old_props, **desired_state(old_spec, OWNER)}
    diff = SecureFunctionProvider().diff("id", olds, new_props)
    assert diff.changes and not diff.replaces
    assert body_sha256(render_body(spec_from(new_props))) != olds["body_sha256"]
    assert '"org_id":42,' in render_body(spec_from(new_props))


def test_unchanged_claims_are_no_diff():
    props = function_props(FunctionSpec(claims=CLAIMS), OWNER)
    olds = {**over_the_wire(props), **desired_state(spec_from(props), OWNER)}
    assert not SecureFunctionProvider().diff("id", olds, over_the_wire(props)).changes


BASE = {"orchestratorUrl": "https://orchestrator.example.com"}


def test_config_claims_keep_big_integers_and_nulls():
    settings = parse_settings({**BASE, "claims": '{"org_id": 42, "big": 12345678901234567890123, "x": null, "f": 1.5}'})
    assert settings.claims == {"org_id": 42, "big": 12345678901234567890123, "x": None, "f": 1.5}
    assert isinstance(settings.claims["big"], int)


@pytest.mark.parametrize(
    ("claims", "key", "problem"),
    [
        ('{"x": NaN}', "secure-webhooks:claims.x", "JSON cannot represent"),
        ('{"x": {"y": [1, Infinity]}}', "secure-webhooks:claims.x.y[1]", "JSON cannot represent"),
        ('{"x": 1e400}', "secure-webhooks:claims.x", "JSON cannot represent"),
        # What the Pulumi CLI makes of `big: 12345678901234567890123` in Pulumi.<stack>.yaml:
        ('{"big": 1.2345678901234568e+22}', "secure-webhooks:claims.big", "lost digits"),
        ('{"l": [-9007199254740992.0]}', "secure-webhooks:claims.l[0]", "lost digits"),
        ('{"nbf": 99999999999}', "secure-webhooks:claims.nbf", "in the future"),
        ('{"nbf": "now"}', "secure-webhooks:claims.nbf", "must be an integer"),
        ('{"nbf": 1.5}', "secure-webhooks:claims.nbf", "must be an integer"),
        ('{"jti": "fixed"}', "secure-webhooks:claims.jti", "set by the trigger"),
        ('{"body_sha256": "x"}', "secure-webhooks:claims.body_sha256", "set by the trigger"),
    ],
)
def test_claims_that_cannot_arrive_as_configured_are_refused_naming_the_key(claims, key, problem):
    with pytest.raises(ConfigError) as info:
        parse_settings({**BASE, "claims": claims}, key_names=STACK_CONFIG)
    assert info.value.key == key and problem in info.value.problem


def test_binding_claims_may_be_configured_when_binding_is_off_and_a_past_nbf_is_kept():
    assert parse_settings({**BASE, "tokenBinding": "false", "claims": {"jti": "j"}}).claims == {"jti": "j"}
    with pytest.raises(ConfigError) as info:
        parse_settings({**BASE, "tokenAudience": "true", "claims": {"aud": "x"}}, key_names=STACK_CONFIG)
    assert info.value.key == "secure-webhooks:claims.aud"
    assert parse_settings({**BASE, "claims": {"nbf": 1_600_000_000}}).claims == {"nbf": 1_600_000_000}

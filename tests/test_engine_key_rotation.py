"""The real Pulumi engine runs a key rotation's config steps (docs/key-rotation.md), each an `up`.

stage (jwtSecretNext, webhookSecretNext), promote (signingKey: next), retire (jwtSecret and
webhookSecret take the new keys, the staged keys and signingKey leave the config): the stack output
and `preview` name the signing key by its id, never the key; retire is refused until the tokens the
old key signed have expired, with the time; the orchestrator (the real verifier on a key file) is
given the new keys between stage and promote. Destroy still gives the legacy webhooks back exactly.
"""

from __future__ import annotations

import base64
import json
import re
import time
from pathlib import Path

import jwt
from test_engine_lifecycle import LEGACY

from local_supabase.bootstrap import install_legacy_webhooks
from local_supabase.orchestrator import WebhookReceiver
from secure_webhooks.signing.key_rotation import SCHEMA, TABLE
from secure_webhooks.signing.trigger_function import key_id
from webhook_verifier import KeyFile

OLD = "engine-rotation-current-key-" + "c" * 24
NEW = "engine-rotation-staged-key-" + "d" * 24
OLD_WHSEC = "whsec_" + base64.b64encode(b"engine-rotation-current-whsec!!!").decode()
NEW_WHSEC = "whsec_" + base64.b64encode(b"engine-rotation-staged-whsec!!!!").decode()
#: The tokens' lifetime, and so how long after promote retire is refused. The refused `up` comes after an `up`,
#: a delivery and four `pulumi config` runs, which a busy machine takes well over 20 s for: then it was allowed.
#: The test waits out the rest of the window before the real retire.
TTL = 60
SECURE = "secure-webhooks:index:SecureWebhooks$pulumi-python:dynamic/secure-webhooks"
SIGNERS = (":SecureFunction::", ":Reconciler::", ":WebhookTrigger::")


def write_keys(path: Path, jwt_secrets: list[str], webhook_secrets: list[str]) -> None:
    fresh = path.with_suffix(".new")
    fresh.write_text(json.dumps({"jwt_secrets": jwt_secrets, "webhook_secrets": webhook_secrets}), encoding="utf-8")
    fresh.replace(path)


def insert_and_receive(engine, receiver: WebhookReceiver, name: str) -> str:
    """Insert a row; the kid of the token it was delivered with (accepted by the receiver)."""
    seen = len(receiver.deliveries)
    with engine.connect() as conn:
        conn.execute("INSERT INTO public.resumes (name, storage_path) VALUES (%s, 'r/')", (name,))
    delivery = next(d for d in receiver.wait_for(seen + 1)[seen:] if d.body["record"]["name"] == name)
    assert delivery.status == 200, delivery.rejection
    return jwt.get_unverified_header(delivery.header("Authorization").split()[1])["kid"]


def test_stage_promote_retire_through_pulumi_up_and_destroy_restores_legacy_webhooks(engine, tmp_path):
    with engine.connect() as conn:
        install_legacy_webhooks(conn, engine.orchestrator.url)
        legacy = conn.execute(LEGACY).fetchall()
    key_file = tmp_path / "orchestrator-keys.json"
    write_keys(key_file, [OLD], [OLD_WHSEC])
    with WebhookReceiver(keys=KeyFile(key_file)) as receiver:
        stack = engine.stack("dev", url=receiver.url, tokenTtlSeconds=TTL, standardWebhooks="true")
        stack.set_secret("secure-webhooks:jwtSecret", OLD)
        stack.set_secret("secure-webhooks:webhookSecret", OLD_WHSEC)
        stack.up()
        assert stack.outputs()["signing"] == {
            "jwtKey": "current",
            "jwtVaultSecret": "app_jwt_secret",
            "jwtKid": key_id(OLD),
            "webhookKey": "current",
        }
        assert insert_and_receive(engine, receiver, "before.pdf") == key_id(OLD)

        # stage: the new keys enter the Vault beside the current ones; nothing else changes
        stack.set_secret("secure-webhooks:jwtSecretNext", NEW)
        stack.set_secret("secure-webhooks:webhookSecretNext", NEW_WHSEC)
        changes = {step for step in stack.preview_steps() if step[0] != "same"}
        assert {
            ("create", f"{SECURE}:VaultSecret::secure-webhooks-secret-next"),
            ("create", f"{SECURE}:VaultSecret::secure-webhooks-webhook-secret-next"),
        } <= changes
        # the signer is untouched: the database still signs with the current keys
        assert not [step for step in changes if any(kind in step[1] for kind in SIGNERS)], changes
        stack.up()
        assert stack.outputs()["signing"]["stagedJwtKid"] == key_id(NEW)
        assert insert_and_receive(engine, receiver, "staged.pdf") == key_id(OLD)
        write_keys(key_file, [OLD, NEW], [OLD_WHSEC, NEW_WHSEC])  # the orchestrator learns them

        # promote: the signer reads the new keys; preview names the Vault secret, not the key
        stack.set_config({"secure-webhooks:signingKey": "next"})
        preview = stack.preview("--diff").stdout
        assert "app_jwt_secret_next" in preview and NEW not in preview
        stack.up()
        signing = stack.outputs()["signing"]
        assert (signing["jwtKey"], signing["jwtKid"], signing["retiringJwtKid"]) == ("next", key_id(NEW), key_id(OLD))
        assert insert_and_receive(engine, receiver, "promoted.pdf") == key_id(NEW)
        promoted = receiver.deliveries[-1].header("webhook-signature").split()
        assert len(promoted) == 2  # the new key's signature and the old one's, until retire

        # retire, too early: refused in preview and up, saying when it may go
        stack.set_secret("secure-webhooks:jwtSecret", NEW)
        stack.set_secret("secure-webhooks:webhookSecret", NEW_WHSEC)
        stack.set_config({"secure-webhooks:jwtSecretNext": None, "secure-webhooks:webhookSecretNext": None})
        stack.set_config({"secure-webhooks:signingKey": None})
        refused = stack.up(check=False)
        message = refused.stdout + refused.stderr
        # both keys retire in this `up`; the engine checks the two Vault secrets in either order and stops at the
        # first refusal, so the message names whichever it checked first
        assert refused.returncode != 0
        assert re.search(r"secure-webhooks:(jwtSecret|webhookSecret): retiring the key", message), message
        assert "is refused until 20" in message and NEW not in message and OLD not in message
        assert insert_and_receive(engine, receiver, "still-promoted.pdf") == key_id(NEW)

        with engine.connect() as conn:  # the time the refusal named: when the old key's last token expires
            until = conn.execute(f"SELECT max(valid_until) FROM {SCHEMA}.{TABLE}").fetchone()[0]
            while conn.execute("SELECT now() < %s", (until,)).fetchone()[0]:
                time.sleep(0.2)
        stack.up()
        write_keys(key_file, [NEW], [NEW_WHSEC])  # the orchestrator drops the old keys
        assert stack.outputs()["signing"] == {
            "jwtKey": "current",
            "jwtVaultSecret": "app_jwt_secret",
            "jwtKid": key_id(NEW),
            "webhookKey": "current",
        }
        assert insert_and_receive(engine, receiver, "retired.pdf") == key_id(NEW)
        assert len(receiver.deliveries[-1].header("webhook-signature").split()) == 1
        stack.preview("--expect-no-changes")
        with engine.connect() as conn:
            names = conn.execute("SELECT name FROM vault.secrets WHERE name LIKE 'app_%' ORDER BY 1").fetchall()
            assert names == [("app_jwt_secret",), ("app_webhook_secret",)]
            assert conn.execute("SELECT to_regnamespace(%s)", (SCHEMA,)).fetchone() == (None,)
        assert all(d.status == 200 for d in receiver.deliveries)

        engine.wait_until_delivered()
        stack.destroy()
    with engine.connect() as conn:
        assert conn.execute(LEGACY).fetchall() == legacy
        assert conn.execute("SELECT to_regprocedure('public.notify_orchestrator_secure()')").fetchone()[0] is None

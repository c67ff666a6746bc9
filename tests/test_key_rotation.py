"""Key rotation under load (issue 18): stage, promote and retire while inserts keep committing.

Each step is what `pulumi up` runs for that config step (docs/key-rotation.md), driven through the
same providers: stage creates the `_next` Vault secrets, promote updates the signer (the function in
direct mode, the reconciler at least once) to read them, retire gives the current secrets the new
values, points the signer back at them and deletes the `_next` ones. A receiver runs the real
verifier on a key file (KeyFile) that the test rewrites as the orchestrator's operator would:
both keys after stage, only the new ones after retire. Every request is real HTTP over loopback
from the stand-in's pg_net worker; nothing waits a guessed time.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import psycopg
import pytest
from outbox_support import TEST_DELIVERY, all_delivered, install_pipeline, reconcile, supabase_with_secret
from providers import OWNER, configured, function_props, trigger_props, unique
from psycopg.types.json import Jsonb
from waiting import eventually

from local_supabase.bootstrap import create_demo_tables
from local_supabase.cluster import LocalSupabase
from local_supabase.orchestrator import Delivery, WebhookReceiver
from local_supabase.pg_net_worker import PgNetWorker
from secure_webhooks.configuration.delivery_settings import DeliverySettings
from secure_webhooks.delivery.reconciler import ReconcilerSpec
from secure_webhooks.delivery.reconciler_provider import ReconcilerProvider, reconciler_props
from secure_webhooks.installation.trigger_provider import WebhookTriggerProvider
from secure_webhooks.signing import key_rotation
from secure_webhooks.signing.function_provider import SecureFunctionProvider
from secure_webhooks.signing.trigger_function import FunctionSpec, key_id
from secure_webhooks.signing.vault_secret_provider import VaultSecretProvider
from webhook_deliveries.__main__ import main as operator
from webhook_verifier import KeyFile, receipt

OLD = "rotation-test-current-jwt-key-" + "a" * 20
NEW = "rotation-test-staged-jwt-key-" + "b" * 20
OLD_WHSEC = "whsec_" + base64.b64encode(b"rotation-test-current-whsec-key!").decode()
NEW_WHSEC = "whsec_" + base64.b64encode(b"rotation-test-staged-whsec-key!!").decode()
JWT_NAME, WEBHOOK_NAME = "app_jwt_secret", "app_webhook_secret"
#: Short, so that retire is allowed soon after promote; the rule is the same for an hour.
TTL = 15
INSERTS_PER_SECOND = 20
RECEIPTS = dataclasses.replace(TEST_DELIVERY, receipts="required")
UNRECEIPTED = "SELECT count(*) FROM secure_webhooks.attempts WHERE error LIKE '%without a valid webhook-receipt%'"


def spec_for(mode: str, *, promoted: bool) -> FunctionSpec:
    """The signer's spec as the component renders it (component.function_spec) before and after promote."""
    return FunctionSpec(
        name="notify_rotation",
        mode=mode,
        token_ttl_seconds=TTL,
        timeout_ms=2000,
        secret_name=f"{JWT_NAME}_next" if promoted else JWT_NAME,
        webhook_secret_name=f"{WEBHOOK_NAME}_next" if promoted else WEBHOOK_NAME,
        previous_webhook_secret_name=WEBHOOK_NAME if promoted else None,
    )


def write_keys(path: Path, jwt_secrets: list[str], webhook_secrets: list[str]) -> None:
    """What the operator does on the orchestrator: a new key file renamed over the old one."""
    fresh = path.with_suffix(".new")
    fresh.write_text(json.dumps({"jwt_secrets": jwt_secrets, "webhook_secrets": webhook_secrets}), encoding="utf-8")
    fresh.replace(path)


@dataclass
class Vault:
    """The Vault secrets as the stack keeps them (VaultSecretProvider), by name."""

    cluster: LocalSupabase
    provider: VaultSecretProvider = field(init=False)
    outs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.provider = configured(VaultSecretProvider, self.cluster)

    @staticmethod
    def props(name: str, value: str) -> dict[str, Any]:
        kind = {"kind": "webhook"} if value.startswith("whsec_") else {}
        setting = {"setting": "webhookSecretNext" if kind else "jwtSecretNext"} if name.endswith("_next") else {}
        return {"name": name, "secret": value, "owner": OWNER, "instance": None, "secret_id": None, **kind, **setting}

    def create(self, name: str, value: str) -> None:
        props = self.props(name, value)
        assert self.provider.check({}, props).failures == []
        self.outs[name] = self.provider.create(props).outs

    def refusal(self, name: str, value: str) -> str | None:
        """What `preview` says about giving secret `name` the value `value`: the retire guard's message."""
        failures = self.provider.check(self.outs[name], self.props(name, value)).failures
        return "; ".join(f.reason for f in failures) or None

    def update(self, name: str, value: str) -> None:
        assert self.refusal(name, value) is None
        olds = self.outs[name]
        self.outs[name] = self.provider.update(olds["secret_id"], olds, self.props(name, value)).outs

    def delete(self, name: str) -> None:
        outs = self.outs.pop(name)
        self.provider.delete(outs["secret_id"], outs)


@dataclass
class Signer:
    """The resource whose body signs: the function (direct) or the reconciler (at least once)."""

    mode: str
    update: Callable[[FunctionSpec], None]


def install_signer(
    cluster: LocalSupabase, mode: str, url: str, stack: list[Callable[[], None]], delivery: DeliverySettings = RECEIPTS
) -> Signer:
    """At least once, with receipts required: an answer counts only with the receipt of the key that signed."""
    spec = spec_for(mode, promoted=False)
    triggers = configured(WebhookTriggerProvider, cluster)
    if mode == "direct":
        with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
            create_demo_tables(conn)
        functions = configured(SecureFunctionProvider, cluster)
        created = functions.create(function_props(spec))
        state = {"outs": created.outs}
        stack.append(lambda: functions.delete(created.id, state["outs"]))

        def update(new: FunctionSpec) -> None:
            state["outs"] = functions.update(created.id, state["outs"], function_props(new)).outs

    else:
        pipeline = install_pipeline(cluster, delivery, name=spec.name)
        pipeline.spec = spec
        stack.append(pipeline.remove)
        provider, created = next(item for item in pipeline.installed if isinstance(item[0], ReconcilerProvider))
        state = {"outs": created.outs}

        def update(new: FunctionSpec) -> None:
            props = reconciler_props(ReconcilerSpec(function=new, delivery=delivery), OWNER)
            state["outs"] = provider.update(created.id, state["outs"], {**state["outs"], **props}).outs

        update(spec)  # the pipeline installs without Standard Webhooks: sign as the test's spec says
    trigger = triggers.create(trigger_props("resumes", unique("rotation"), url, spec))
    stack.append(lambda: triggers.delete(trigger.id, trigger.outs))
    return Signer(mode, update)


class Load:
    """Inserts committing continuously (one row per transaction) from a thread, until stopped."""

    def __init__(self, cluster: LocalSupabase, per_second: int) -> None:
        self._conninfo = cluster.dsn("postgres")
        self._interval = 1 / per_second
        self._stop = threading.Event()
        self.ids: list[int] = []
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="inserts", daemon=True)

    def _run(self) -> None:
        try:
            with psycopg.connect(self._conninfo, autocommit=True) as conn:
                while not self._stop.wait(self._interval):
                    row = conn.execute(
                        "INSERT INTO public.resumes (name, storage_path) VALUES (%s, 'p') RETURNING id",
                        (f"rotation-{len(self.ids)}",),
                    ).fetchone()
                    self.ids.append(row[0])
        except BaseException as error:  # an insert failing during a step is what this test must see
            self._error = error

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop inserting; an insert that failed meanwhile fails the test here."""
        self._stop.set()
        self._thread.join()
        if self._error is not None:
            raise AssertionError(f"an insert failed after {len(self.ids)} rows") from self._error

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@contextmanager
def reconciling(cluster: LocalSupabase, mode: str) -> Iterator[None]:
    """The reconciler's cron loop at least once (rounds back to back); nothing in direct mode."""
    if mode == "direct":
        yield
        return
    stop = threading.Event()

    def rounds() -> None:
        with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
            while not stop.is_set():
                if reconcile(conn) == 0:
                    stop.wait(0.05)

    thread = threading.Thread(target=rounds, name="reconciler", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def kid_of(delivery: Delivery) -> str:
    return jwt.get_unverified_header(delivery.header("Authorization").split()[1])["kid"]


def delivered_ids(receiver: WebhookReceiver) -> set[int]:
    return {d.body["record"]["id"] for d in receiver.deliveries if d.status == 200}


@dataclass(frozen=True)
class Counts:
    inserted: int
    delivered: int
    rejected: int
    lost: int


@contextmanager
def rotation_setup(mode: str, tmp_path: Path) -> Iterator[tuple[LocalSupabase, Vault, WebhookReceiver, Path]]:
    """A fresh cluster whose Vault holds the current keys (kept by the stack), a receiver on a key
    file holding them, and the signer installed in `mode`."""
    key_file = tmp_path / "orchestrator-keys.json"
    write_keys(key_file, [OLD], [OLD_WHSEC])
    with supabase_with_secret(OLD) as cluster, WebhookReceiver(keys=KeyFile(key_file)) as receiver:
        with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
            conn.execute("DELETE FROM vault.secrets WHERE name = %s", (JWT_NAME,))  # the stack keeps it instead
        vault = Vault(cluster)
        vault.create(JWT_NAME, OLD)
        vault.create(WEBHOOK_NAME, OLD_WHSEC)
        yield cluster, vault, receiver, key_file


@pytest.mark.parametrize("mode", ["at-least-once", "direct"])
def test_a_rotation_under_continuous_load_rejects_nothing_and_loses_nothing(mode, tmp_path):
    with rotation_setup(mode, tmp_path) as (cluster, vault, receiver, key_file):
        cleanup: list[Callable[[], None]] = []
        signer = install_signer(cluster, mode, receiver.url + "/ingest/interns/individual", cleanup)
        try:
            with PgNetWorker(cluster.admin_dsn), reconciling(cluster, mode), Load(cluster, INSERTS_PER_SECOND) as load:
                eventually(lambda: len(delivered_ids(receiver)) >= 10, "deliveries before stage", 120)

                # stage: the new keys enter the Vault; the database still signs with the current ones
                vault.create(f"{JWT_NAME}_next", NEW)
                vault.create(f"{WEBHOOK_NAME}_next", NEW_WHSEC)
                staged_at = len(receiver.deliveries)
                eventually(lambda: len(receiver.deliveries) >= staged_at + 10, "deliveries after stage", 120)
                assert {kid_of(d) for d in receiver.deliveries} == {key_id(OLD)}
                # ... and the orchestrator learns them: both keys valid there, no restart
                write_keys(key_file, [OLD, NEW], [OLD_WHSEC, NEW_WHSEC])

                # promote: every attempt from now on is signed with the new key
                signer.update(spec_for(mode, promoted=True))
                promoted_at = len(receiver.deliveries)

                # retire too early (asked right after the promote, which recorded when the old key's tokens
                # expire: a slow delivery below cannot let the TTL run out first): refused, saying when it may go
                refusal = vault.refusal(JWT_NAME, NEW)
                assert refusal is not None and "secure-webhooks:jwtSecret:" in refusal
                assert "is refused until 20" in refusal and "s from now" in refusal
                assert NEW not in refusal and OLD not in refusal
                eventually(
                    lambda: any(kid_of(d) == key_id(NEW) for d in receiver.deliveries[promoted_at:]),
                    "a delivery signed with the promoted key",
                    30,
                )
                eventually(lambda: vault.refusal(JWT_NAME, NEW) is None, "retire allowed", TTL + 30)
                assert vault.refusal(WEBHOOK_NAME, NEW_WHSEC) is None

                # retire: the current secrets take the new keys, the signer reads them, _next goes
                vault.update(JWT_NAME, NEW)
                vault.update(WEBHOOK_NAME, NEW_WHSEC)
                signer.update(spec_for(mode, promoted=False))
                vault.delete(f"{JWT_NAME}_next")
                vault.delete(f"{WEBHOOK_NAME}_next")
                write_keys(key_file, [NEW], [NEW_WHSEC])  # the orchestrator drops the old keys
                retired_at = len(receiver.deliveries)
                # Rows committed well after the retire (a round that began before it may still sign with
                # the code it started with) are signed after it, whenever they arrive: pg_net sends a
                # batch at once, so the order of arrival says nothing.
                after_retire = len(load.ids)
                eventually(lambda: len(load.ids) >= after_retire + 10, "inserts after retire", 120)
                eventually(
                    lambda: len(set(load.ids[after_retire + 10 :]) & delivered_ids(receiver)) >= 5,
                    "deliveries of rows inserted after retire",
                    120,
                )
                load.stop()
                late_ids = set(load.ids[after_retire + 10 :])

                inserted = set(load.ids)
                eventually(lambda: inserted <= delivered_ids(receiver), "every insert delivered", 180)
                unreceipted = 0
                if mode == "at-least-once":  # answers that arrived after the promote still carried valid receipts
                    with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
                        eventually(all_delivered(conn), "every event marked delivered", 60)
                        (unreceipted,) = conn.execute(UNRECEIPTED).fetchone()
        finally:
            for undo in reversed(cleanup):
                undo()

        deliveries = receiver.deliveries
        counts = Counts(
            inserted=len(inserted),
            delivered=len(delivered_ids(receiver) & inserted),
            rejected=sum(d.status != 200 for d in deliveries),
            lost=len(inserted - delivered_ids(receiver)),
        )
        print(f"\nkey rotation under load, {mode}: {counts}, attempts answered without a valid receipt {unreceipted}")
        assert counts.rejected == 0, [d.rejection for d in deliveries if d.status != 200][:5]
        assert unreceipted == 0
        assert counts.lost == 0
        assert counts.inserted >= 100
        # promoted: the new key's token and both Standard Webhooks signatures; retired: one signature
        after_promote = deliveries[promoted_at:retired_at]
        assert any(len(d.header("webhook-signature").split()) == 2 for d in after_promote)
        late = [d for d in deliveries if d.body["record"]["id"] in late_ids]
        assert len(late) >= 5
        assert {kid_of(d) for d in late} == {key_id(NEW)}
        assert all(len(d.header("webhook-signature").split()) == 1 for d in late)
        with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
            assert conn.execute(
                "SELECT to_regclass(%s)", (f"{key_rotation.SCHEMA}.{key_rotation.TABLE}",)
            ).fetchone() == (None,), "the retired key's record is forgotten once it left the Vault"


def test_the_emergency_switch_is_retried_until_the_orchestrator_learns_the_key(tmp_path):
    """One step, for a leaked key: the database signs with the new key at once. Requests the orchestrator
    refuses meanwhile (unknown kid) are retried at least once, and delivered once it holds the key."""
    with rotation_setup("at-least-once", tmp_path) as (cluster, vault, receiver, key_file):
        cleanup: list[Callable[[], None]] = []
        install_signer(cluster, "at-least-once", receiver.url + "/ingest/interns/individual", cleanup)
        try:
            with PgNetWorker(cluster.admin_dsn), reconciling(cluster, "at-least-once"):
                with Load(cluster, INSERTS_PER_SECOND) as load:
                    eventually(lambda: len(delivered_ids(receiver)) >= 5, "deliveries before the switch", 30)
                    # the current key signs: replacing it at once is allowed (no rotation under way)
                    vault.update(JWT_NAME, NEW)
                    eventually(lambda: any(d.status == 401 for d in receiver.deliveries), "a refused request", 30)
                    write_keys(key_file, [NEW], [OLD_WHSEC])  # the orchestrator learns the new key
                    learned_at = len(receiver.deliveries)
                    eventually(lambda: len(receiver.deliveries) >= learned_at + 5, "deliveries after", 30)
                inserted = set(load.ids)
                eventually(lambda: inserted <= delivered_ids(receiver), "every insert delivered", 180)
        finally:
            for undo in reversed(cleanup):
                undo()
        refused = [d for d in receiver.deliveries if d.status != 200]
        print(f"\nemergency switch: inserted {len(inserted)}, refused during the gap {len(refused)}, lost 0")
        assert refused and all(d.rejection.endswith("names no key this verifier holds") for d in refused)
        assert {d.body["record"]["id"] for d in refused} <= delivered_ids(receiver)


def test_a_staged_key_changed_or_removed_out_of_band_is_drift(supabase_ready):
    """What `pulumi refresh` sees (the provider's read) when someone edits or deletes a staged key in the Vault."""
    vault = Vault(supabase_ready)
    name = unique("drift") + "_next"
    vault.create(name, NEW)
    outs = vault.outs[name]
    with psycopg.connect(supabase_ready.dsn("postgres"), autocommit=True) as conn:
        conn.execute("SELECT vault.update_secret(id, %s) FROM vault.secrets WHERE name = %s", (OLD, name))
        read = vault.provider.read(outs["secret_id"], outs)
        assert read.outs["value_matches"] is False
        assert vault.provider.diff(outs["secret_id"], read.outs, Vault.props(name, NEW)).changes  # `up` puts it back
        conn.execute("DELETE FROM vault.secrets WHERE name = %s", (name,))
    assert vault.provider.read(outs["secret_id"], outs).id is None  # gone: refresh drops it, `up` creates it again


OTHER = "rotation-test-key-of-no-rotation-" + "c" * 20
PATH = "/ingest/interns/individual"


def mac_of(value: str) -> str:
    """The MAC of a receipt `v1,<kid>,<mac> v1,<mac>`."""
    return value.split()[0].rsplit(",", 1)[1]


def test_a_receipt_counts_with_the_key_its_kid_names_of_the_rotations_two(tmp_path):
    """Issue 18 #1: receipts name their key. Attempts signed with the current key before a promote are
    answered after it: a receipt naming the old key still delivers (the race docs/key-rotation.md had),
    a receipt without kid counts with the key that signs now only, and a kid or key outside the rotation
    delivers nothing. Responses are planted where pg_net writes them, so each case is exact."""
    with rotation_setup("at-least-once", tmp_path) as (cluster, vault, receiver, _):
        cleanup: list[Callable[[], None]] = []
        signer = install_signer(cluster, "at-least-once", receiver.url + PATH, cleanup)
        try:
            vault.create(f"{JWT_NAME}_next", NEW)  # stage
            with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
                conn.execute(
                    "INSERT INTO public.resumes (name, storage_path) SELECT 'receipt-' || g, 'p'"
                    " FROM generate_series(1, 6) AS g"
                )
                reconcile(conn)  # signed with the current key; no worker runs, so the requests wait
                sent = conn.execute(
                    "SELECT id::text, token_iat, payload::text, request_id FROM secure_webhooks.events"
                    " WHERE state = 'sending' ORDER BY id"
                ).fetchall()
                assert len(sent) == 6
                signer.update(spec_for("at-least-once", promoted=True))  # promote, before any answer is judged

                def answers(event: str, iat: int, body: str) -> list[tuple[str, bool]]:
                    old, new, other = (receipt(key, event, iat, body.encode()) for key in (OLD, NEW, OTHER))
                    return [
                        (old, True),  # the key that signed the attempt, named: the race is closed
                        (new, True),  # the promoted key, named
                        (f"v1,{mac_of(new)}", True),  # no kid (a receiver older than key ids): the key signing now
                        (f"v1,{mac_of(old)}", False),  # no kid: never checked with the key that stopped signing
                        (other, False),  # a key that is no key of the rotation
                        (f"v1,{key_id(OLD)},{mac_of(other)}", False),  # the old key's kid over another key's MAC
                    ]

                expected = {}
                conn.execute("DELETE FROM net.http_request_queue")
                for index, (event, iat, body, request) in enumerate(sent):
                    value, delivers = answers(event, iat, body)[index]
                    conn.execute(
                        "INSERT INTO net._http_response (id, status_code, headers) VALUES (%s, 200, %s)",
                        (request, Jsonb({"webhook-receipt": value})),
                    )
                    expected[event] = "delivered" if delivers else "failed"
                reconcile(conn)
                judged = dict(conn.execute("SELECT event_id::text, status FROM secure_webhooks.deliveries").fetchall())
                errors = {row[0] for row in conn.execute(UNRECEIPTED.replace("count(*)", "DISTINCT error"))}
        finally:
            for undo in reversed(cleanup):
                undo()
        print(f"\nreceipts after a promote: {sorted(judged.values())}")
        assert judged == expected
        assert errors == {"HTTP 200 without a valid webhook-receipt (delivery.receipts is required)"}


def status_of(cluster: LocalSupabase, capsys) -> tuple[dict[str, Any], list[str]]:
    """`webhook-deliveries status`, as JSON and as the operator's table (its key lines)."""
    capsys.readouterr()
    assert operator(["--dsn", cluster.dsn("postgres"), "status", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert operator(["--dsn", cluster.dsn("postgres"), "status"]) == 0
    text = capsys.readouterr().out
    for key in (OLD, NEW, OLD_WHSEC, NEW_WHSEC):  # no key, nor any part of one
        assert key not in text and key[6:30] not in text and key not in json.dumps(document)
    labels = ("jwt key", "webhook key", "retiring", "keys")
    return document["signing_keys"], [line for line in text.splitlines() if line.split(":")[0] in labels]


def test_status_shows_which_key_signs_through_the_rotation(tmp_path, capsys):
    """Issue 18 #4: status names the signing key by kid at each step, the staged one, and the retiring
    one with the time it may leave the Vault; from the reconciler as installed, not from config."""
    with rotation_setup("at-least-once", tmp_path) as (cluster, vault, receiver, _):
        cleanup: list[Callable[[], None]] = []
        signer = install_signer(cluster, "at-least-once", receiver.url + PATH, cleanup)
        try:
            keys, lines = status_of(cluster, capsys)
            assert keys["jwt"] == {"vault_secret": JWT_NAME, "kid": key_id(OLD), "staged": None, "also_signing": None}
            assert keys["webhook"]["kid"] == key_id(OLD_WHSEC) and keys["retiring"] == []
            assert lines[0] == f"jwt key: signs with kid {key_id(OLD)} (Vault secret {JWT_NAME})"

            vault.create(f"{JWT_NAME}_next", NEW)  # stage
            vault.create(f"{WEBHOOK_NAME}_next", NEW_WHSEC)
            keys, lines = status_of(cluster, capsys)
            assert keys["jwt"]["kid"] == key_id(OLD)
            assert keys["jwt"]["staged"] == {"vault_secret": f"{JWT_NAME}_next", "kid": key_id(NEW)}
            assert keys["webhook"]["staged"]["kid"] == key_id(NEW_WHSEC)
            assert lines[0].endswith(f"; staged: kid {key_id(NEW)} (Vault secret {JWT_NAME}_next)")

            signer.update(spec_for("at-least-once", promoted=True))  # promote
            keys, lines = status_of(cluster, capsys)
            assert keys["jwt"] == {
                "vault_secret": f"{JWT_NAME}_next",
                "kid": key_id(NEW),
                "staged": None,
                "also_signing": None,
            }
            assert keys["webhook"]["kid"] == key_id(NEW_WHSEC)
            assert keys["webhook"]["also_signing"] == {"vault_secret": WEBHOOK_NAME, "kid": key_id(OLD_WHSEC)}
            retiring = {key["kid"]: key for key in keys["retiring"]}
            assert set(retiring) == {key_id(OLD), key_id(OLD_WHSEC)}
            old = retiring[key_id(OLD)]
            assert old["may_leave_vault_now"] is False
            left = datetime.fromisoformat(old["may_leave_vault_at"]) - datetime.fromisoformat(old["stopped_signing_at"])
            assert left == timedelta(seconds=TTL)  # the token TTL: when retire stops being refused
            assert any(line.startswith(f"retiring: kid {key_id(OLD)} stopped signing at ") for line in lines)

            eventually(lambda: vault.refusal(JWT_NAME, NEW) is None, "retire allowed", TTL + 30)
            keys, _ = status_of(cluster, capsys)
            assert {key["kid"]: key["may_leave_vault_now"] for key in keys["retiring"]}[key_id(OLD)] is True

            vault.update(JWT_NAME, NEW)  # retire
            vault.update(WEBHOOK_NAME, NEW_WHSEC)
            signer.update(spec_for("at-least-once", promoted=False))
            vault.delete(f"{JWT_NAME}_next")
            vault.delete(f"{WEBHOOK_NAME}_next")
            keys, lines = status_of(cluster, capsys)
            assert keys["jwt"] == {"vault_secret": JWT_NAME, "kid": key_id(NEW), "staged": None, "also_signing": None}
            assert keys["webhook"]["kid"] == key_id(NEW_WHSEC) and keys["retiring"] == []
            assert not any(line.startswith("retiring") for line in lines)
        finally:
            for undo in reversed(cleanup):
                undo()

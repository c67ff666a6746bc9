"""Proves tests/dynamic_grpc.py against the real ``python -m pulumi.dynamic`` server.

Why: the harness is only worth something if it really pickles a provider,
crosses the wire, and reports secrets the way the engine would. The throw-away
provider in tests/fake_providers.py writes what it sees to a JSON file. The
tests read that file to check what happened inside the other process.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fake_providers
import pytest
from dynamic_grpc import DynamicProviderServer, ProviderCallError, import_root, secret

PROJECT = "fakeproj"
URN = f"urn:pulumi:dev::{PROJECT}::pulumi-python:dynamic:Resource::thing"
API_TOKEN = "tok-very-secret-1"
PASSWORD = "pw-very-secret-2"


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "store.json"


@pytest.fixture
def server(store: Path) -> Iterator[DynamicProviderServer]:
    """A configured provider process, as the engine has it before the first Check."""
    provider = fake_providers.FileStoreProvider()
    root = import_root(fake_providers)
    with DynamicProviderServer(provider, root, project=PROJECT, pythonpath=[root]) as srv:
        srv.configure(
            {f"{PROJECT}:storeFile": str(store), f"{PROJECT}:apiToken": API_TOKEN},
            secret_keys=[f"{PROJECT}:apiToken"],
        )
        yield srv


def stored(store: Path) -> dict[str, Any]:
    return json.loads(store.read_text())


def create_thing(server: DynamicProviderServer, name: str = "a"):
    checked = server.check(URN, {}, {"name": name, "password": secret(PASSWORD)})
    return server.create(URN, checked.state())


def test_plain_and_secret_config_reach_provider_configure(server: DynamicProviderServer, store: Path) -> None:
    assert server.plugin_version == "0.1.0"
    assert server.accept_secrets is False  # so the engine sends secret inputs as plaintext
    server.check(URN, {}, {"name": "a"})  # configure() runs lazily, on first use
    assert stored(store)["configured"] == {
        "storeFile": str(store),
        "apiToken": API_TOKEN,
    }


def test_configure_rejects_unnamespaced_keys(server: DynamicProviderServer) -> None:
    with pytest.raises(ValueError, match="namespaced"):
        server.configure({"storeFile": "x"})


def test_check_applies_defaults_failures_and_keeps_secret_inputs_secret(
    server: DynamicProviderServer,
) -> None:
    checked = server.check(URN, {}, {"name": "a", "password": secret(PASSWORD)})
    assert checked.outputs == {"name": "a", "greeting": "hello", "password": PASSWORD}
    assert checked.secret_keys == {"password"}
    assert checked.wire_secret_keys == set()
    bad = server.check(URN, {}, {"name": 3})
    assert bad.failures == (("name", "name must be a string"),)


def test_create_keeps_output_secrets_secret(server: DynamicProviderServer, store: Path) -> None:
    created = create_thing(server)
    assert created.id
    assert created.outputs["signature"] == f"{API_TOKEN}/a"
    assert created.wire_secret_keys == {"signature"}  # the provider wrapped it
    assert created.secret_keys == {
        "signature",
        "password",
    }  # password: same-named secret input
    assert stored(store)["resources"][created.id]["password"] == PASSWORD


def test_read_returns_live_state_and_engine_keeps_state_secrets(
    server: DynamicProviderServer,
) -> None:
    created = create_thing(server)
    read = server.read(created.id, URN, created.state())
    assert (read.id, read.outputs) == (created.id, created.outputs)
    assert read.secret_keys == {"signature", "password"}
    assert read.inputs is None
    server.delete(created.id, URN, created.state())
    assert server.read(created.id, URN, created.state()).id is None


def test_diff_reports_changes_and_replacements(server: DynamicProviderServer) -> None:
    created = create_thing(server)
    olds = created.state()
    same = server.check(URN, olds, {"name": "a", "password": secret(PASSWORD)})
    assert server.diff(created.id, URN, olds, same.state()).changes is False
    greeting = {**same.state(), "greeting": "hi"}
    assert server.diff(created.id, URN, olds, greeting).changes is True
    assert server.diff(created.id, URN, olds, greeting).replaces == ()
    assert server.diff(created.id, URN, olds, {**same.state(), "name": "b"}).replaces == ("name",)


def test_update_writes_new_state(server: DynamicProviderServer, store: Path) -> None:
    created = create_thing(server)
    news = {**created.state(), "greeting": "hi"}
    updated = server.update(created.id, URN, created.state(), news)
    assert updated.outputs["greeting"] == "hi"
    assert updated.secret_keys == {"signature", "password"}
    assert stored(store)["resources"][created.id]["greeting"] == "hi"


def test_delete_removes_resource(server: DynamicProviderServer, store: Path) -> None:
    created = create_thing(server)
    server.delete(created.id, URN, created.state())
    assert stored(store)["resources"] == {}


def test_provider_errors_carry_the_server_traceback(
    server: DynamicProviderServer,
) -> None:
    with pytest.raises(ProviderCallError, match="KeyError"):
        server.delete("no-such-id", URN, {})


def test_logs_are_captured_and_hold_no_secrets(server: DynamicProviderServer) -> None:
    created = create_thing(server)
    deadline = time.monotonic() + 60
    while not any(f"created {created.id}" in line for line in server.logs):
        assert time.monotonic() < deadline, server.logs
        time.sleep(0.05)
    assert not [line for line in server.logs if API_TOKEN in line or PASSWORD in line]


def test_provider_class_must_be_importable_in_the_server(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dill pickles the class by reference, so the server's cwd/sys.path must import it."""
    monkeypatch.delenv("PYTHONPATH", raising=False)
    provider = fake_providers.FileStoreProvider()
    with (
        DynamicProviderServer(provider, tmp_path) as srv,
        pytest.raises(ProviderCallError, match="No module named 'fake_providers'"),
    ):
        srv.check(URN, {}, {"name": "a"})


def test_reconfigure_after_first_use_is_ignored(server: DynamicProviderServer) -> None:
    """The server caches the configured provider per ``__provider`` string, for the whole process."""
    server.check(URN, {}, {"name": "a"})
    server.configure({f"{PROJECT}:storeFile": "/nonexistent", f"{PROJECT}:apiToken": "new"})
    assert create_thing(server).outputs["signature"] == f"{API_TOKEN}/a"

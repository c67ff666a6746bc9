"""A throw-away dynamic provider for tests/test_dynamic_grpc.py.

Why: to prove the gRPC harness without depending on the real providers in
components/. It keeps its "remote" state in a JSON file whose path comes from
stack config. The tests can then see what each call did and what
``configure`` received, although the provider runs in another process.
"""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path
from typing import Any

import pulumi
from pulumi.dynamic import (
    CheckFailure,
    CheckResult,
    ConfigureRequest,
    CreateResult,
    DiffResult,
    ReadResult,
    ResourceProvider,
    UpdateResult,
)
from pulumi.runtime.rpc import wrap_rpc_secret


class FileStoreProvider(ResourceProvider):
    """Stores each resource's inputs in ``<project>:storeFile``, signed with the secret ``apiToken``."""

    store: Path
    token: str

    def configure(self, req: ConfigureRequest) -> None:
        self.store = Path(req.config.require("storeFile"))
        self.token = req.config.require("apiToken")
        self._save(
            {
                **self._load(),
                "configured": {"storeFile": str(self.store), "apiToken": self.token},
            }
        )
        print(f"configured with store {self.store}", file=sys.stderr)

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        if not isinstance(news.get("name"), str):
            return CheckResult(news, [CheckFailure("name", "name must be a string")])
        return CheckResult({"greeting": "hello", **news}, [])

    def create(self, props: dict[str, Any]) -> CreateResult:
        id_ = uuid.uuid4().hex
        self._put(id_, props)
        pulumi.log.info(f"created {id_} for {props['name']}")
        return CreateResult(id_, self._outs(props))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        stored = self._load()["resources"].get(id_)
        return ReadResult(id_ if stored else None, self._outs(stored or {}))

    def diff(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = [k for k in ("name", "greeting", "password") if olds.get(k) != news.get(k)]
        return DiffResult(changes=bool(changed), replaces=[k for k in changed if k == "name"])

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        self._put(id_, news)
        return UpdateResult(self._outs(news))

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        state = self._load()
        del state["resources"][id_]
        self._save(state)

    def _outs(self, props: dict[str, Any]) -> dict[str, Any]:
        """Echo the inputs and add a token derived from the secret config, marked secret on the wire."""
        inputs = {k: v for k, v in props.items() if k != "__provider"}
        return {
            **inputs,
            "signature": wrap_rpc_secret(f"{self.token}/{props.get('name')}"),
        }

    def _put(self, id_: str, props: dict[str, Any]) -> None:
        state = self._load()
        state["resources"][id_] = {k: v for k, v in props.items() if k != "__provider"}
        self._save(state)

    def _load(self) -> dict[str, Any]:
        if not self.store.exists():
            return {"resources": {}}
        return json.loads(self.store.read_text())

    def _save(self, state: dict[str, Any]) -> None:
        self.store.write_text(json.dumps(state))

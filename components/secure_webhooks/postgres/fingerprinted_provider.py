"""Base of the providers whose objects are checked for drift by catalog fingerprint.

`create` and `update` install, then record the fingerprint they saw
(`installed`); `read` records what is live now (`fingerprint`). A difference
between the two, or a changed input, is a change for `pulumi preview`, and
`update` installs again. Subclasses say what to install and what to fingerprint.
"""

from __future__ import annotations

from typing import Any

import psycopg
from pulumi.dynamic import CreateResult, DiffResult, ReadResult, UpdateResult

from secure_webhooks.postgres.catalog import drifted
from secure_webhooks.postgres.database import DatabaseProvider


class FingerprintedProvider(DatabaseProvider):
    #: Input keys whose change means the objects must be installed again.
    inputs: tuple[str, ...] = ()

    def resource_id(self, props: dict[str, Any]) -> str:
        raise NotImplementedError

    def install(self, cur: psycopg.Cursor, props: dict[str, Any], previous: dict[str, Any] | None) -> None:
        """Create or repair the objects; `previous` is the old state on update."""
        raise NotImplementedError

    def fingerprint(self, cur: psycopg.Cursor, props: dict[str, Any]) -> dict[str, str] | None:
        """Digests of the live objects, or None when the resource is gone."""
        raise NotImplementedError

    def _installed(self, props: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any]:
        with self.db.transaction() as cur:
            self.install(cur, props, previous)
            seen = self.fingerprint(cur, props)
        return {**props, "installed": seen, "fingerprint": seen}

    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(self.resource_id(props), self._installed(props, None))

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(self._installed(news, olds))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        with self.db.transaction() as cur:
            seen = self.fingerprint(cur, props)
        if seen is None:
            return ReadResult(None, {})
        return ReadResult(id_, {**props, "fingerprint": seen})

    def diff(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = [key for key in self.inputs if olds.get(key) != news.get(key)]
        changed += drifted(olds.get("fingerprint"), olds.get("installed"))
        return DiffResult(changes=bool(changed), replaces=[], delete_before_replace=False)

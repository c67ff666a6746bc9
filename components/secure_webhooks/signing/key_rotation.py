"""When a key that stopped signing may leave the Vault (docs/key-rotation.md, "Retire").

A token stays valid for its TTL after it was minted, so the key that signed it must stay in the
orchestrator's key set (and, for the operator's sake, in the Vault beside the new one) until the
last token it signed has expired. The moment it stopped signing is the commit of the function (or
reconciler) that switched to another Vault secret, so that transaction records it here, in a private
store of ours (installation/private_store.py): keyed by the key's id (`key_id`, which reveals nothing
of the key), with the time its last token expires. Recording it in the database rather than in
Pulumi's state keeps it true when an `up` fails halfway, and lets every stack instance see it.

`retire_refusal` is what the Vault secret's `check` asks before a value leaves: in `preview` as in
`up`, and before any resource has changed.
"""

from __future__ import annotations

import datetime

import psycopg

from secure_webhooks.installation.private_store import PrivateStore
from secure_webhooks.signing.trigger_function import key_id_expression

SCHEMA = "secure_webhooks_keys"
TABLE = "retiring"
COMMENT = (
    "secure-webhooks: keys that stopped signing, and when the last token each signed expires "
    "(a key may leave the Vault only then). Private to the database owner."
)
STORE = PrivateStore(
    SCHEMA,
    TABLE,
    "(kid text PRIMARY KEY, stopped_signing_at timestamptz NOT NULL, valid_until timestamptz NOT NULL)",
    COMMENT,
)

#: Standard Webhooks receivers refuse a webhook-timestamp more than this far off: a request signed
#: with the old whsec_ key alone (before the promote) is worthless after it, or once its token expired.
WEBHOOK_TOLERANCE_SECONDS = 300

_KID_OF = f"SELECT {key_id_expression('s.decrypted_secret')} FROM vault.decrypted_secrets AS s WHERE s.name = %s"


def note_switch(cur: psycopg.Cursor, old_name: str | None, new_name: str | None, valid_seconds: int) -> None:
    """A signer switched from Vault secret `old_name` to `new_name`: the key `old_name` holds now stopped
    signing, and what it signed stays valid `valid_seconds` more; unless both hold the same key, as
    when a retire moved the promoted key into the current key's secret. The key `new_name` holds
    signs again, so it is not retiring (a rotation aborted by switching back)."""
    if old_name is None or new_name is None or old_name == new_name:
        return
    cur.execute(f"SELECT ({_KID_OF}), ({_KID_OF})", (old_name, new_name))
    old_kid, new_kid = cur.fetchone()
    retiring = old_kid is not None and old_kid != new_kid
    if retiring:
        STORE.ensure(cur)
    elif not STORE.lock(cur):
        return  # nothing retires, and no record to correct
    relation = STORE.relation.as_string(cur)
    cur.execute(f"DELETE FROM {relation} WHERE kid = %s", (new_kid,))
    if retiring:
        cur.execute(
            f"""
            INSERT INTO {relation} (kid, stopped_signing_at, valid_until)
            VALUES (%s, pg_catalog.now(), pg_catalog.now() + pg_catalog.make_interval(secs => %s))
            ON CONFLICT (kid) DO UPDATE
               SET stopped_signing_at = EXCLUDED.stopped_signing_at,
                   valid_until = GREATEST({relation}.valid_until, EXCLUDED.valid_until)
            """,
            (old_kid, valid_seconds),
        )
    else:
        STORE.drop_if_empty(cur)


def retire_refusal(cur: psycopg.Cursor, name: str) -> str | None:
    """Why the key Vault secret `name` holds may not leave it yet (its tokens are still valid), or None.

    Compares key ids inside PostgreSQL: the key never leaves the database.
    """
    if not STORE.exists(cur):
        return None
    relation = STORE.relation.as_string(cur)
    cur.execute(
        f"""
        SELECT r.kid, r.stopped_signing_at, r.valid_until, pg_catalog.ceil(
                 pg_catalog.date_part('epoch', r.valid_until - pg_catalog.now()))::bigint
          FROM {relation} AS r
         WHERE r.kid IN ({_KID_OF}) AND r.valid_until > pg_catalog.now()
        """,
        (name,),
    )
    row = cur.fetchone()
    if row is None:
        return None
    kid, stopped, until, seconds = row
    return (
        f"retiring the key in Vault secret {name!r} (kid {kid}) is refused until {_utc(until)}, {seconds} s from now: "
        f"it stopped signing at {_utc(stopped)}, and what it signed stays valid until then "
        "(tokenTtlSeconds; for a whsec_ key, the 5-minute timestamp tolerance). Run `pulumi up` again after that "
        "time; meanwhile the database signs with the new key, and the orchestrator must keep both"
    )


def forget_gone(cur: psycopg.Cursor) -> None:
    """Forget records of keys that expired or are no longer in the Vault; drop the store once empty."""
    if not STORE.lock(cur):
        return
    relation = STORE.relation.as_string(cur)
    cur.execute(
        f"""
        DELETE FROM {relation} AS r
         WHERE r.valid_until <= pg_catalog.now()
            OR NOT EXISTS (SELECT FROM vault.decrypted_secrets AS s
                            WHERE {key_id_expression("s.decrypted_secret")} = r.kid)
        """
    )
    STORE.drop_if_empty(cur)


def _utc(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

"""Which stack owns a database object, recorded in the object's COMMENT.

Two stacks pointed at one database must not fight over the same trigger: the
first one to create it writes its name in the comment and every later write
checks it. An object without our marker is someone else's legacy object,
which we adopt and give back on destroy.

A project/stack name is not an identity (the same-named stack can exist in
another backend), so the marker also names the stack instance that wrote it
(`; instance <uuid>;`, see installation_provider.py). Markers written before
instance ids existed have none.
"""

from __future__ import annotations

import re

MARKER_PREFIX = "Managed by Pulumi stack "
_MARKER = re.compile(re.escape(MARKER_PREFIX) + r"([^\s;]+)")
_INSTANCE = re.compile(re.escape(MARKER_PREFIX) + r"[^\s;]+; instance ([0-9a-f-]{36});")


class OwnershipError(RuntimeError):
    """The object belongs to another stack; nothing was changed."""


def marker(owner: str, instance: str | None = None) -> str:
    """The comment that marks an object as `owner`'s, written by stack instance `instance` (when known)."""
    written_by = f" instance {instance};" if instance else ""
    return f"{MARKER_PREFIX}{owner};{written_by} changes made outside Pulumi are reverted by `pulumi up`."


def owner_of(comment: str | None) -> str | None:
    match = _MARKER.search(comment or "")
    return match.group(1) if match else None


def instance_of(comment: str | None) -> str | None:
    """The stack instance that wrote the marker, or None (no marker, or one written before instance ids)."""
    match = _INSTANCE.search(comment or "")
    return match.group(1) if match else None


def refusal(kind: str, name: str, comment: str | None, owner: str) -> str | None:
    """Why `owner` may not take over this object (another stack manages it), or None when it may."""
    current = owner_of(comment)
    if current is None or current == owner:
        return None
    return (
        f"{kind} {name} is managed by Pulumi stack {current}, not {owner}; refusing to take it over. "
        f"Destroy it from {current} first, or give this webhook another name."
    )


def claim(kind: str, name: str, comment: str | None, owner: str) -> bool:
    """True when the object is unmanaged (to be adopted); raise if another stack owns it."""
    reason = refusal(kind, name, comment, owner)
    if reason is not None:
        raise OwnershipError(reason)
    return owner_of(comment) is None

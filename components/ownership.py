"""Which stack owns a database object, recorded in the object's COMMENT.

Two stacks pointed at one database must not fight over the same trigger: the
first one to create it writes its name in the comment and every later write
checks it. An object without our marker is someone else's legacy object,
which we adopt and give back on destroy.
"""

from __future__ import annotations

import re

MARKER_PREFIX = "Managed by Pulumi stack "
_MARKER = re.compile(re.escape(MARKER_PREFIX) + r"([^\s;]+)")


class OwnershipError(RuntimeError):
    """The object belongs to another stack; nothing was changed."""


def marker(owner: str) -> str:
    return f"{MARKER_PREFIX}{owner}; changes made outside Pulumi are reverted by `pulumi up`."


def owner_of(comment: str | None) -> str | None:
    match = _MARKER.search(comment or "")
    return match.group(1) if match else None


def claim(kind: str, name: str, comment: str | None, owner: str) -> bool:
    """True when `name` is unmanaged (to be adopted); raise if another stack owns it."""
    current = owner_of(comment)
    if current is not None and current != owner:
        raise OwnershipError(
            f"{kind} {name} is managed by Pulumi stack {current}, not {owner}; "
            f"refusing to take it over. Destroy it from {current} first, or give this webhook another name."
        )
    return current is None

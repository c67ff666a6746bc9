"""Waiting for a condition, never for a guessed time: the timeout only bounds how long a failure takes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(check: Callable[[], T], what: str, timeout: float) -> T:
    """`check()`'s first truthy value, asked ten times a second; TimeoutError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(0.1)
    return value

"""A receiver that measures what a backlog exposes the orchestrator to: how many requests it served at
once, and the most that arrived in any one-second window.

The per-endpoint limits (docs/delivery.md, "Sparing the orchestrator") promise exactly these two numbers,
so they are counted where the orchestrator would feel them, in the receiving process, not inferred from
the outbox. Shared by tests/test_endpoint_limits.py and the benchmark (bench/delivery.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

from local_supabase.orchestrator import Delivery, PlannedResponse, WebhookReceiver
from webhook_verifier import Verified


class MeasuringReceiver(WebhookReceiver):
    """A receiver that notes each request's arrival and how many it was serving at once; `down` answers 503.

    Each request takes `work` seconds, as an orchestrator's does, so requests overlap when they can.
    """

    def __init__(self, *args: Any, work: float = 0.02, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.work = work
        self.down = False
        self.arrivals: list[float] = []
        self.peak = 0
        self._serving = 0
        self._count = threading.Lock()

    def verify(self, headers: Mapping[str, str], body: bytes) -> Verified:
        with self._count:
            self.arrivals.append(time.monotonic())
            self._serving += 1
            self.peak = max(self.peak, self._serving)
        if self.work:
            time.sleep(self.work)
        return super().verify(headers, body)

    def _next_planned(self) -> PlannedResponse | None:
        return PlannedResponse(503) if self.down else super()._next_planned()

    def _record(self, record: Delivery) -> None:
        with self._count:
            self._serving -= 1
        super()._record(record)

    def busiest_second(self) -> int:
        """The most arrivals in any window [t, t + 1 s)."""
        with self._count:
            times = sorted(self.arrivals)
        most, start = 0, 0
        for end, arrived in enumerate(times):
            while arrived - times[start] >= 1.0:
                start += 1
            most = max(most, end - start + 1)
        return most

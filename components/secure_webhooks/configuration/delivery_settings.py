"""The `secure-webhooks:delivery` object: how hard we try to get each event to the orchestrator.

`direct` is the seed's fire-and-forget (one pg_net request per row, sent at
most once). `at-least-once` writes a durable outbox row in the user's
transaction and leaves sending, retrying and dead-lettering to the
reconciler, so an outage, a 5xx or a crash delays an event but never loses it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from secure_webhooks.configuration.config_errors import ConfigError
from secure_webhooks.delivery.ordering import DEFAULT_ON_DEAD, DEFAULT_ORDERING, ON_DEAD, ORDERINGS

MODES = ("at-least-once", "direct")
DEFAULT_MODE = "at-least-once"

#: "auto" picks the finest schedule the server's pg_cron accepts: '1 seconds' on
#: pg_cron >= 1.5 (Supabase ships 1.6), '* * * * *' on 1.4 (Debian's package).
AUTO_SCHEDULE = "auto"
_SECONDS_SCHEDULE = re.compile(r"^([1-9]|[1-5][0-9]) seconds$")
_CRON_FIELD = re.compile(r"^[0-9*/,\-]+$")

KEYS = (
    "mode",
    "maxAttempts",
    "retryInitialSeconds",
    "retryMaxSeconds",
    "retryMultiplier",
    "retryJitter",
    "keepDeliveredHours",
    "keepDeadHours",
    "schedule",
    "batchSize",
    "receipts",
    "ordering",
    "orderingOnDead",
    # Per-endpoint limits and circuit breaker (secure_webhooks/delivery/endpoints.py).
    "maxInFlight",
    "maxPerSecond",
    "pauseAfterFailures",
    "probeSeconds",
    "alertIntervalSeconds",
)
#: `required`: a 2xx counts as delivered only with a valid `webhook-receipt` (docs/delivery.md, "Delivery receipts").
RECEIPTS = ("off", "required")


@dataclass(frozen=True)
class DeliverySettings:
    """Retry policy and retention of the outbox; docs/configuration.md, "Delivery", says what each means."""

    mode: str = DEFAULT_MODE
    #: Attempts per event before it becomes dead; a replay starts a new budget.
    max_attempts: int = 12
    #: Backoff: min(max, initial * multiplier ** (attempt - 1)), +/- jitter. The default reaches
    #: 24 h at the 9th retry: 5 s, 20 s, 80 s, 5 min, 21 min, 85 min, 5.7 h, 22.8 h, 24 h, ...
    retry_initial_seconds: int = 5
    retry_max_seconds: int = 86_400
    retry_multiplier: float = 4.0
    retry_jitter: float = 0.2
    keep_delivered_hours: int = 168
    keep_dead_hours: int = 720
    schedule: str = AUTO_SCHEDULE
    #: Events sent, and outcomes recorded, per reconciler round (one transaction).
    batch_size: int = 500
    #: "required": only a 2xx that carries a receipt signed with the JWT key is a delivery, so a role
    #: that writes pg_net's world-writable responses cannot mark an event delivered.
    receipts: str = "off"
    #: "per-row": a row's events go out one at a time, in commit order (docs/delivery.md, "Order").
    ordering: str = DEFAULT_ORDERING
    #: With per-row order, whether a dead event holds its row's later events ("block") or not ("skip").
    ordering_on_dead: str = DEFAULT_ON_DEAD
    # Per endpoint (the URL's origin), docs/delivery.md "Sparing the orchestrator": a recovering receiver
    # sees a backlog drained at a pace it can take. 100/s is Convoy's default endpoint limit (5,000 a
    # minute, ~83/s) rounded up, below what pg_net alone sends (~120-150/s), and far above a typical
    # team's traffic (a few events a second); 100 in flight covers a second of that rate queued in pg_net.
    #: Requests of one endpoint queued in pg_net, on the wire or not yet judged.
    max_in_flight: int = 100
    #: Requests of one endpoint arriving at the receiver in any one-second window.
    max_per_second: int = 100
    #: Consecutive endpoint failures (no answer, timeout, 5xx, 408, 429) that pause the endpoint.
    pause_after_failures: int = 10
    #: While paused, one probe (its oldest waiting event) this often.
    probe_seconds: int = 30
    #: Dead events are summarised in one alert per interval at most (docs/operations.md, "Alerts").
    alert_interval_seconds: int = 300
    #: The Vault secret holding the alert URL, set by the component when the stack keeps one (never the URL).
    alert_url_secret: str | None = None

    @property
    def at_least_once(self) -> bool:
        return self.mode == "at-least-once"

    def retry_delays(self) -> list[float]:
        """Seconds before each retry, without jitter: the schedule docs/configuration.md shows."""
        return [
            min(self.retry_max_seconds, self.retry_initial_seconds * self.retry_multiplier**attempt)
            for attempt in range(self.max_attempts - 1)
        ]


def _key(name: str) -> str:
    return f"secure-webhooks:delivery.{name}"


def _number(name: str, value: Any, default: float, low: float, high: float, *, integer: bool) -> Any:
    key = _key(name)
    if value is None:
        return default
    if isinstance(value, str):
        try:
            value = int(value) if integer else float(value)
        except ValueError:
            raise ConfigError(key, f"must be a number, got {value!r}") from None
    allowed = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, allowed):
        raise ConfigError(key, f"must be {'an integer' if integer else 'a number'}, got {value!r}")
    if not low <= value <= high:
        raise ConfigError(key, f"must be between {low} and {high}, got {value}")
    return value


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ConfigError(_key(name), f"must be one of {list(allowed)}, got {value!r}")
    return value


def check_schedule(value: Any) -> str:
    key = _key("schedule")
    if value is None:
        return AUTO_SCHEDULE
    if not isinstance(value, str):
        raise ConfigError(key, f"must be a string, got {value!r}")
    schedule = " ".join(value.split())
    if schedule == AUTO_SCHEDULE or _SECONDS_SCHEDULE.match(schedule):
        return schedule
    fields = schedule.split(" ")
    if len(fields) == 5 and all(_CRON_FIELD.match(field) for field in fields):
        return schedule
    raise ConfigError(
        key, f"must be 'auto', 'N seconds' (1-59, pg_cron >= 1.5) or a 5-field cron expression, got {value!r}"
    )


def check_delivery(value: Any) -> DeliverySettings:
    """Parse the delivery object; every error names its key, e.g. secure-webhooks:delivery.maxAttempts."""
    raw = value
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError("secure-webhooks:delivery", f"is not valid JSON ({exc.msg})") from None
    if raw is None:
        return DeliverySettings()
    if not isinstance(raw, dict):
        raise ConfigError("secure-webhooks:delivery", "must be an object, e.g. {mode: at-least-once}")
    if "alertUrl" in raw:  # stack config takes it out (stack_config.py): it never reaches the settings
        raise ConfigError(
            "secure-webhooks:delivery", "holds alertUrl, a secret: pass it as SecureWebhooksArgs.alert_url"
        )
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise ConfigError(_key(unknown[0]), f"is not a delivery setting; expected one of {list(KEYS)}")
    mode = raw.get("mode", DEFAULT_MODE)
    if mode not in MODES:
        raise ConfigError(_key("mode"), f"must be one of {list(MODES)}, got {mode!r}")
    receipts = raw.get("receipts", "off")
    if receipts not in RECEIPTS:
        raise ConfigError(_key("receipts"), f"must be one of {list(RECEIPTS)}, got {receipts!r}")
    ordering = _choice("ordering", raw.get("ordering", DEFAULT_ORDERING), ORDERINGS)
    if ordering != DEFAULT_ORDERING and mode != "at-least-once":
        raise ConfigError(_key("ordering"), f"{ordering!r} needs mode 'at-least-once' (direct mode sends at once)")
    on_dead = _choice("orderingOnDead", raw.get("orderingOnDead", DEFAULT_ON_DEAD), ON_DEAD)
    defaults = DeliverySettings()
    initial = _number("retryInitialSeconds", raw.get("retryInitialSeconds"), 5, 1, 3600, integer=True)
    maximum = _number("retryMaxSeconds", raw.get("retryMaxSeconds"), 86_400, 1, 7 * 86_400, integer=True)
    if maximum < initial:
        raise ConfigError(_key("retryMaxSeconds"), f"must be at least retryInitialSeconds ({initial}), got {maximum}")
    return DeliverySettings(
        mode=mode,
        max_attempts=_number("maxAttempts", raw.get("maxAttempts"), defaults.max_attempts, 1, 100, integer=True),
        retry_initial_seconds=initial,
        retry_max_seconds=maximum,
        retry_multiplier=float(_number("retryMultiplier", raw.get("retryMultiplier"), 4.0, 1, 10, integer=False)),
        retry_jitter=float(_number("retryJitter", raw.get("retryJitter"), 0.2, 0, 1, integer=False)),
        keep_delivered_hours=_number(
            "keepDeliveredHours", raw.get("keepDeliveredHours"), defaults.keep_delivered_hours, 0, 87_600, integer=True
        ),
        keep_dead_hours=_number(
            "keepDeadHours", raw.get("keepDeadHours"), defaults.keep_dead_hours, 1, 87_600, integer=True
        ),
        schedule=check_schedule(raw.get("schedule")),
        batch_size=_number("batchSize", raw.get("batchSize"), defaults.batch_size, 1, 10_000, integer=True),
        receipts=receipts,
        ordering=ordering,
        ordering_on_dead=on_dead,
        **_endpoint_limits(raw, defaults),
        alert_interval_seconds=_number(
            "alertIntervalSeconds",
            raw.get("alertIntervalSeconds"),
            defaults.alert_interval_seconds,
            1,
            86_400,
            integer=True,
        ),
    )


def _endpoint_limits(raw: dict[str, Any], defaults: DeliverySettings) -> dict[str, int]:
    """The endpoint limits and circuit breaker keys (docs/configuration.md, "Delivery")."""
    return {
        "max_in_flight": _number(
            "maxInFlight", raw.get("maxInFlight"), defaults.max_in_flight, 1, 10_000, integer=True
        ),
        "max_per_second": _number(
            "maxPerSecond", raw.get("maxPerSecond"), defaults.max_per_second, 1, 10_000, integer=True
        ),
        "pause_after_failures": _number(
            "pauseAfterFailures", raw.get("pauseAfterFailures"), defaults.pause_after_failures, 1, 1000, integer=True
        ),
        "probe_seconds": _number(
            "probeSeconds", raw.get("probeSeconds"), defaults.probe_seconds, 1, 3600, integer=True
        ),
    }

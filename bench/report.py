"""The results table and the goal lines, as plain text."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bench.variants import BASELINE, VARIANTS


@dataclass(frozen=True)
class Goal:
    """The issue's target for our function, as a ratio to Supabase's static-header webhook (b)."""

    mode: str
    max_ratio: float


GOALS = (Goal("single-row", 1.10), Goal("bulk", 0.85))
OURS = [variant for variant in VARIANTS if variant.key.startswith("d-")]


def medians(samples: Mapping[str, Sequence[float]]) -> dict[str, float]:
    return {key: statistics.median(values) for key, values in samples.items()}


def ratios(values: Mapping[str, float]) -> dict[str, float]:
    return {key: value / values[BASELINE] for key, value in values.items()}


def table(single_ms: Mapping[str, float], bulk_us: Mapping[str, float]) -> str:
    """variant | single-row median ms/insert | ratio to (b) | bulk median us/row | ratio to (b)."""
    single_ratio, bulk_ratio = ratios(single_ms), ratios(bulk_us)
    header = " | ".join((f"{'variant':<22}", "single-row ms/insert", "ratio to (b)", "bulk us/row", "ratio to (b)"))
    lines = [header, "-" * len(header)]
    for variant in VARIANTS:
        key = variant.key
        lines.append(
            f"{variant.label:<22} | {single_ms[key]:>20.3f} | {single_ratio[key]:>11.2f}x | "
            f"{bulk_us[key]:>11.1f} | {bulk_ratio[key]:>11.2f}x"
        )
    return "\n".join(lines)


def goal_lines(results: Mapping[str, Mapping[str, float]]) -> str:
    """One line per goal and signer, PASS or MISS; informational, never the exit status."""
    lines = []
    for goal in GOALS:
        measured = ratios(results[goal.mode])
        for variant in OURS:
            ratio = measured[variant.key]
            verdict = "PASS" if ratio <= goal.max_ratio else "MISS"
            lines.append(f"goal: {variant.label} {goal.mode} <= {goal.max_ratio:.2f}x (b): {ratio:.2f}x  {verdict}")
    return "\n".join(lines)

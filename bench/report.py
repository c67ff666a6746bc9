"""The results table and the goal lines, as plain text.

Goal lines are verdicts: only a full run's sizes support them. A smoke run (`--smoke`: one round of a few
transactions, figures that swing by 2x from run to run) checks that every measurement runs and prints
NO_VERDICTS instead.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bench.variants import AT_LEAST_ONCE, BASELINE, LABEL_WIDTH, VARIANTS


@dataclass(frozen=True)
class Goal:
    """The issue's target for our function, as a ratio to Supabase's static-header webhook (b)."""

    mode: str
    max_ratio: float


#: The three measurements, as (key, column header, format of the median).
MODES = (
    ("single-row", "single-row ms", "{:.3f}"),
    ("interleaved", "interleaved ms", "{:.3f}"),
    ("bulk", "bulk us/row", "{:.1f}"),
)
GOALS = (Goal("single-row", 1.10), Goal("interleaved", 1.10), Goal("bulk", 0.85))
OURS = [variant for variant in VARIANTS if variant.key.startswith(("d-", "e"))]
NO_VERDICTS = (
    "smoke run: every measurement ran; its sizes are too small for the figures to judge a goal, so no goal "
    "line is printed (a full run, `python -m bench`, prints them)"
)


def medians(samples: Mapping[str, Sequence[float]]) -> dict[str, float]:
    return {key: statistics.median(values) for key, values in samples.items()}


def ratios(values: Mapping[str, float]) -> dict[str, float]:
    return {key: value / values[BASELINE] for key, value in values.items()}


def table(results: Mapping[str, Mapping[str, float]]) -> str:
    """Per variant and mode: the median and its ratio to (b)."""
    cells = [f"{'variant':<{LABEL_WIDTH}}"]
    for _, header, _ in MODES:
        cells += [f"{header:>14}", "vs (b)"]
    header = " | ".join(cells)
    lines = [header, "-" * len(header)]
    mode_ratios = {mode: ratios(results[mode]) for mode, _, _ in MODES}
    for variant in VARIANTS:
        cells = [f"{variant.label:<{LABEL_WIDTH}}"]
        for mode, _, number in MODES:
            cells += [f"{number.format(results[mode][variant.key]):>14}", f"{mode_ratios[mode][variant.key]:>5.2f}x"]
        lines.append(" | ".join(cells))
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


def round_spread(samples: Mapping[str, Mapping[str, Sequence[float]]]) -> str:
    """Our variants' ratio to (b) within each round: how much of a goal line is noise.

    Each round measures every variant back to back, so the per-round ratio
    cancels drift that the ratio of medians only averages out.
    """
    lines = ["per-round ratios to (b) (median, min-max over the rounds):"]
    for mode, by_variant in samples.items():
        for variant in OURS:
            paired = [ours / base for ours, base in zip(by_variant[variant.key], by_variant[BASELINE], strict=True)]
            lines.append(
                f"    {variant.label} {mode}: {statistics.median(paired):.2f}x, {min(paired):.2f}-{max(paired):.2f}x"
            )
    return "\n".join(lines)


def insert_path_lines(results: Mapping[str, Mapping[str, float]], verdicts: bool = True) -> str:
    """(e)'s ratios to (b) from this run's cost table, restated beside the limits and per-row order figures.

    The limits live in the reconciler and per-row order is opt-in, so neither should move the default
    insert path; these lines say, in the same run as the new figures, that it did not.
    """
    lines = [
        "insert path of at-least-once (e), default settings (limits on, ordering none), from this run's cost "
        "table above:"
    ]
    for goal in GOALS:
        ratio = ratios(results[goal.mode])[AT_LEAST_ONCE]
        lines.append(f"    {goal.mode}: {ratio:.2f}x (b)")
        if verdicts:
            holds = "yes" if ratio <= goal.max_ratio else "no"
            lines.append(f"goal: (e) {goal.mode} <= {goal.max_ratio:.2f}x (b): {ratio:.2f}x; goal holds: {holds}")
    return "\n".join(lines)

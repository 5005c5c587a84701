"""Units in prose: 1K tokens, 3,600 instance-seconds."""

from __future__ import annotations


def scale_label(scale: int) -> str:
    """1000 → 1K, 2000000 → 2M, 3600 → 3,600."""
    for size, suffix in ((1_000_000_000, "G"), (1_000_000, "M"), (1_000, "K")):
        if scale >= size and scale % size == 0:
            return f"{scale // size:,}{suffix}"
    return f"{scale:,}"


def units_plural(unit: str) -> str:
    return unit if unit.endswith("s") else f"{unit}s"

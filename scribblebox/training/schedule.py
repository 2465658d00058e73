"""The seed's learning-rate policy: cyclical (Smith's CLR), triangular2, between 1e-5 and 1e-3, 4 cycles per run.

A pure function of the iteration, so a resumed run continues on the same curve without any scheduler state.
"""
from __future__ import annotations

import math

LOW, HIGH, CYCLES = 1e-5, 1e-3, 4


def clr_triangular2(iteration: int, total: int, cycles: int = CYCLES, low: float = LOW, high: float = HIGH) -> float:
    """Learning rate at `iteration` (0-based) of a `total`-iteration run: each cycle rises linearly from `low` to its
    peak at its middle and falls back; the peak's height above `low` halves every cycle (triangular2)."""
    if total < 1 or cycles < 1:
        raise ValueError(f"total iterations and cycles must be >= 1, got total={total}, cycles={cycles}")
    if not 0 < low <= high:
        raise ValueError(f"need 0 < low <= high learning rates, got low={low}, high={high}")
    half = total / (2 * cycles)  # iterations from a cycle's start to its peak
    cycle = math.floor(iteration / (2 * half))
    x = abs(iteration / half - 2 * cycle - 1)
    return low + (high - low) * max(0.0, 1.0 - x) / 2**cycle


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr

"""Summary statistics over repeated runs: mean and Student-t confidence intervals."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats


def confidence_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of the two-sided Student-t interval over repeats.

    half-width = t_{(1+confidence)/2, n-1} * s / sqrt(n) with s the sample standard deviation
    (ddof 1). One value has no spread to estimate: its half-width is NaN, not 0.
    """
    array = np.asarray(values, dtype=float)
    if array.ndim != 1 or len(array) == 0:
        raise ValueError("confidence_interval needs a non-empty 1-D sequence of values")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    mean = float(array.mean())
    if len(array) < 2:
        return mean, math.nan
    t = stats.t.ppf((1 + confidence) / 2, df=len(array) - 1)
    return mean, float(t * array.std(ddof=1) / math.sqrt(len(array)))


def format_interval(values: Sequence[float], confidence: float = 0.95, digits: int = 3) -> str:
    """``mean ± half-width`` as text (``mean`` alone for a single value)."""
    mean, half_width = confidence_interval(values, confidence)
    if math.isnan(half_width):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {half_width:.{digits}f}"

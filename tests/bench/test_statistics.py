import math

import numpy as np
import pytest
from scipy import stats

from fairdml.bench.statistics import confidence_interval, format_interval


def test_matches_scipy_student_t_interval():
    values = [0.61, 0.64, 0.59, 0.66, 0.62]
    mean, half_width = confidence_interval(values)
    low, high = stats.t.interval(0.95, df=4, loc=np.mean(values), scale=stats.sem(values))
    assert mean == pytest.approx(np.mean(values))
    assert half_width == pytest.approx((high - low) / 2)


def test_single_value_has_no_interval():
    mean, half_width = confidence_interval([0.5])
    assert mean == 0.5 and math.isnan(half_width)
    assert format_interval([0.5]) == "0.500"


def test_rejects_empty_and_bad_confidence():
    with pytest.raises(ValueError, match="non-empty"):
        confidence_interval([])
    with pytest.raises(ValueError, match="confidence"):
        confidence_interval([1.0, 2.0], confidence=1.5)

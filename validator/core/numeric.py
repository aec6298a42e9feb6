"""Number checks and the float32 sum the live weight rules share (pure).

bool is an int to Python but never a block, uid or reward here, so the checks refuse it.
"""
from __future__ import annotations

import numbers
from typing import Any

import numpy as np


def is_int(x: Any) -> bool:
    """An integer that is not a bool."""
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def is_number(x: Any) -> bool:
    """A real number that is not a bool."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def f32_sum(v: np.ndarray) -> np.float32:
    """The float32 sum of a float32 vector, correctly rounded. Live sums with torch, whose
    order depends on the CPU's vector width; this agrees with it to an ulp."""
    return np.float32(np.asarray(v, dtype=np.float64).sum())

"""Shapley values by enumerating every coalition: the independent oracle the explainer tests check against."""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import combinations
from typing import Any

import numpy as np


def brute_force_shapley(v: Callable[[set[int]], Any], d: int) -> np.ndarray:
    """phi_i = sum over S without i of |S|! (d - |S| - 1)! / d! * (v(S + i) - v(S)), for i < d.

    ``v`` maps a set of player indices to a number or an array (then phi is ``(d, *shape)``).
    """
    phi = np.zeros((d, *np.shape(v(set()))))
    for i in range(d):
        others = [j for j in range(d) if j != i]
        for size in range(d):
            w = math.factorial(size) * math.factorial(d - size - 1) / math.factorial(d)
            for s in combinations(others, size):
                phi[i] += w * (np.asarray(v(set(s) | {i})) - np.asarray(v(set(s))))
    return phi

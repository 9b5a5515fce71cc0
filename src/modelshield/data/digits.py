"""scikit-learn's bundled 8x8 handwritten digits, split into train and test (no download)."""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np
import torch

from modelshield._checks import check_range
from modelshield.data._dataset import Dataset
from modelshield.errors import ConfigError

__all__ = ["DIGITS_CLASSES", "load_digits"]

DIGITS_CLASSES: tuple[str, ...] = tuple(str(d) for d in range(10))
_SOURCE = "sklearn.datasets.load_digits"


def load_digits(*, test_fraction: float = 0.3, seed: int = 0) -> Dataset:
    """Load the UCI optical digits bundled with scikit-learn (Alpaydin and Kaynak, 1998).

    1,797 grey-scale 8x8 images with pixel values 0..16, scaled to [0, 1] by dividing by 16.
    The train/test split is stratified by class and fixed by ``seed`` (a private
    ``numpy.random.RandomState``; the global RNG is not touched), so every call with the same
    arguments returns the same split.

    Args:
        test_fraction: share of the points held out for testing, in (0, 1).
        seed: seed of the split.

    Returns:
        A Dataset with images of shape ``(1, 8, 8)`` in [0, 1]; ``sha256`` covers the four split
        arrays (x_train, y_train, x_test, y_test, in that order).

    Raises:
        ConfigError: test_fraction is not in (0, 1) or seed is not a non-negative int.

    Reference:
        E. Alpaydin and C. Kaynak, "Optical Recognition of Handwritten Digits", UCI Machine
        Learning Repository, 1998.

    Example:
        ds = load_digits()
        ds.x_train.shape            # torch.Size([1347, 1, 8, 8])
    """
    if not (
        isinstance(test_fraction, int | float)
        and not isinstance(test_fraction, bool)
        and 0.0 < test_fraction < 1.0
    ):
        raise ConfigError(
            f"load_digits: 'test_fraction' must be a number in (0, 1); got {test_fraction!r}. "
            "Give the held-out share, e.g. test_fraction=0.3."
        )
    check_range("seed", seed, owner="load_digits", low=0, high=2**32 - 1, integer=True)
    x_train, y_train, x_test, y_test, digest = _split(float(test_fraction), int(seed))
    return Dataset(
        name="digits",
        x_train=torch.tensor(x_train),
        y_train=torch.tensor(y_train),
        x_test=torch.tensor(x_test),
        y_test=torch.tensor(y_test),
        classes=DIGITS_CLASSES,
        sha256=digest,
        source=_SOURCE,
    )


@lru_cache(maxsize=8)
def _split(test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """Read-only (x_train, y_train, x_test, y_test) numpy arrays and their SHA-256."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_load_digits()
    x = (np.asarray(bunch.images, dtype=np.float32) / np.float32(16.0))[:, None, :, :]
    y = np.asarray(bunch.target, dtype=np.int64)
    parts = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    x_train, x_test, y_train, y_test = (np.ascontiguousarray(p) for p in parts)
    digest = hashlib.sha256()
    for arr in (x_train, y_train, x_test, y_test):
        digest.update(arr.tobytes())
        arr.flags.writeable = False
    return x_train, y_train, x_test, y_test, digest.hexdigest()

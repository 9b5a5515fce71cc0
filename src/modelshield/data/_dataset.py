"""The Dataset record every loader returns, and where data files are looked for."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from modelshield.errors import MissingDataError

__all__ = ["DATA_ENV", "Dataset", "data_dir"]

logger = logging.getLogger(__name__)

DATA_ENV = "MODELSHIELD_DATA"
"""Environment variable naming the folder that holds the data sets (e.g. ``<dir>/mnist``)."""


@dataclass(frozen=True, slots=True, eq=False)
class Dataset:
    """A train/test split of an image classification data set, ready for a model.

    Equality is identity (``eq=False``): element-wise tensor comparison has no single truth
    value; compare ``sha256`` to check two loads hold the same data.

    Attributes:
        name: the data set's name, e.g. ``"digits"``, ``"mnist"``, ``"fashion-mnist"``.
        x_train: ``(N, 1, H, W)`` float32 images in ``bounds``.
        y_train: ``(N,)`` int64 class indices.
        x_test: ``(M, 1, H, W)`` float32 images in ``bounds``.
        y_test: ``(M,)`` int64 class indices.
        classes: the class names, indexed by label.
        sha256: SHA-256 over the raw source files' bytes (files sorted by name) or, for
            data built in memory (digits), over the split arrays: the provenance of the data.
        source: the folder the files came from, or the Python function that produced them.
        bounds: the natural input range ``(lo, hi)``.
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    classes: tuple[str, ...]
    sha256: str
    source: str
    bounds: tuple[float, float] = (0.0, 1.0)

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, train={tuple(self.x_train.shape)}, "
            f"test={tuple(self.x_test.shape)}, classes={len(self.classes)}, source={self.source!r})"
        )

    @property
    def n_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, e.g. ``(1, 28, 28)``."""
        return tuple(self.x_train.shape[1:])


_FIX = (
    f"Set the environment variable {DATA_ENV} to the folder holding the data sets "
    "(e.g. export MODELSHIELD_DATA=/path/to/data with mnist/ and fashion-mnist/ inside), "
    "or pass root=... (CLI: --data-dir)"
)


def data_dir(root: str | Path | None = None) -> Path:
    """Return the data folder: ``root`` if given, else ``$MODELSHIELD_DATA``.

    Args:
        root: an explicit folder; takes precedence over the environment variable.

    Returns:
        The folder as an absolute path; it exists.

    Raises:
        MissingDataError: neither is set, or the folder does not exist. The message names both
            fixes (the environment variable and ``root=`` / ``--data-dir``).
    """
    if root is not None:
        path, origin = Path(root).expanduser(), "root"
    else:
        env = os.environ.get(DATA_ENV, "").strip()
        if not env:
            raise MissingDataError(
                f"data_dir: no data folder given; got root=None and {DATA_ENV} unset. {_FIX}."
            )
        path, origin = Path(env).expanduser(), DATA_ENV
    if not path.is_dir():
        raise MissingDataError(
            f"data_dir: the data folder must exist; got {origin}={str(path)!r}, which is not a "
            f"folder. {_FIX}."
        )
    return path.resolve()


def find_data_file(root: str | Path | None, *, folder: str, names: tuple[str, ...]) -> Path | None:
    """The first of ``names`` found in ``<base>/<folder>/`` or ``<base>/``, else None.

    ``base`` is ``root`` if given, then ``$MODELSHIELD_DATA`` if set (a folder given for other
    data sets, e.g. MNIST only, need not hold these files). None means neither is set or neither
    holds any of the files: callers then read their embedded copy, and say so in ``source``.
    """
    env = os.environ.get(DATA_ENV, "").strip()
    bases = [(Path(b).expanduser(), origin) for b, origin in ((root, "root"), (env or None, DATA_ENV))
             if b is not None]
    for base, _ in bases:
        for d in (base / folder, base):
            for name in names:
                candidate = d / name
                if candidate.is_file():
                    return candidate.resolve()
    if bases:
        logger.info("no %s under %s; using the embedded copy", " or ".join(names),
                    ", ".join(f"{origin}={str(base)!r}" for base, origin in bases))
    return None

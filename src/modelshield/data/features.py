"""Feature matrices from text, tabular or image data (shared by poisoning attacks and data validation)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

import numpy as np
import torch
from torch import Tensor

from modelshield.errors import InputError

__all__ = ["DataKind", "Embed", "Featurizer", "as_labels", "data_kind", "n_rows", "select_rows"]

DataKind: TypeAlias = Literal["text", "tabular", "image"]
Embed: TypeAlias = Callable[[Tensor], Tensor]
"""A model's embedding: (N, ...) tensor -> (N, D) tensor (called under no_grad)."""


def data_kind(x: object, *, owner: str) -> DataKind:
    """ "text" for a sequence of str, "tabular" for 2-D arrays, "image" for 3-D and more; checks rows."""
    if isinstance(x, Tensor | np.ndarray):
        if x.ndim < 2 or x.shape[0] == 0:
            raise InputError(
                f"{owner}: x must have shape (N, D) or (N, C, H, W) with N >= 1; got shape "
                f"{tuple(x.shape)}. Pass one row per example."
            )
        arr = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
        if not np.issubdtype(arr.dtype, np.number):
            raise InputError(
                f"{owner}: x must be numeric; got dtype {arr.dtype}. Encode features as numbers."
            )
        finite = np.isfinite(arr.reshape(arr.shape[0], -1)).all(1)
        if not finite.all():
            row = int(np.flatnonzero(~finite)[0])
            raise InputError(
                f"{owner}: x must be finite; got NaN or inf in row {row}. Impute or drop those rows."
            )
        return "tabular" if x.ndim == 2 else "image"
    if isinstance(x, str) or not isinstance(x, Sequence) or len(x) == 0:
        raise InputError(
            f"{owner}: x must be a non-empty list of str, a 2-D array or an (N, C, H, W) tensor; got "
            f"{type(x).__name__}. Pass texts as a list of strings."
        )
    for i, t in enumerate(x):
        if not isinstance(t, str):
            raise InputError(f"{owner}: x[{i}] must be a str; got {type(t).__name__}. Pass texts as str.")
        if not t.strip():
            raise InputError(f"{owner}: x[{i}] must be a non-empty text; got {t!r}. Remove empty rows.")
    return "text"


def n_rows(x: Any) -> int:
    return int(x.shape[0]) if isinstance(x, Tensor | np.ndarray) else len(x)


def select_rows(x: Any, idx: np.ndarray) -> Any:
    """Rows idx of x, in x's own type (list/tuple of str, Tensor or ndarray)."""
    if isinstance(x, Tensor):
        return x[torch.as_tensor(idx, dtype=torch.long, device=x.device)]
    if isinstance(x, np.ndarray):
        return x[idx]
    picked = [x[int(i)] for i in idx]
    return tuple(picked) if isinstance(x, tuple) else picked


def as_labels(y: object, *, n: int, owner: str) -> np.ndarray:
    """(n,) int64 labels >= 0 from a tensor, array or sequence, or InputError naming the row."""
    arr = y.detach().cpu().numpy() if isinstance(y, Tensor) else np.asarray(y)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise InputError(
            f"{owner}: y must have shape ({n},) to match x; got shape {arr.shape}. Pass one label per row."
        )
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        raise InputError(
            f"{owner}: y must hold integer class indices; got dtype {arr.dtype}. Encode labels as 0..K-1."
        )
    arr = arr.astype(np.int64)
    if (arr < 0).any():
        row = int(np.flatnonzero(arr < 0)[0])
        raise InputError(
            f"{owner}: y must be class indices >= 0; got {int(arr[row])} at row {row}. "
            "Encode labels as 0..K-1."
        )
    return arr


@dataclass
class Featurizer:
    """Fitted map from raw rows to features: TF-IDF for text, flattened (or embedded) arrays otherwise.

    Dense features are standardised with the mean and std of the data seen in ``fit`` (columns
    with zero spread are left unscaled), so that distances weigh features alike.
    """

    embed: Embed | None = None
    kind_: DataKind | None = field(default=None, init=False)
    _vectorizer: Any = field(default=None, init=False, repr=False)
    _mean: np.ndarray | None = field(default=None, init=False, repr=False)
    _std: np.ndarray | None = field(default=None, init=False, repr=False)

    def fit(self, x: Any, *, owner: str) -> Featurizer:
        self.kind_ = data_kind(x, owner=owner)
        if self.kind_ == "text":
            from sklearn.feature_extraction.text import TfidfVectorizer

            self._vectorizer = TfidfVectorizer(sublinear_tf=True).fit(list(x))
        else:
            raw = self._dense(x)
            self._mean = raw.mean(0)
            std = raw.std(0)
            self._std = np.where(std > 1e-12, std, 1.0)
        return self

    def raw(self, x: Any) -> Any:
        """Features before standardising: a sparse TF-IDF matrix or a dense float64 array."""
        if self.kind_ == "text":
            return self._vectorizer.transform(list(x))
        return self._dense(x)

    def transform(self, x: Any) -> Any:
        """Features for distances: sparse L2-normalised TF-IDF, or standardised dense rows."""
        if self.kind_ == "text":
            return self._vectorizer.transform(list(x))
        if self._mean is None or self._std is None:
            raise RuntimeError("internal: Featurizer used before fit")
        return (self._dense(x) - self._mean) / self._std

    def _dense(self, x: Any) -> np.ndarray:
        t = x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))
        if self.embed is not None:
            with torch.no_grad():
                t = self.embed(t.float())
        return t.detach().cpu().reshape(t.shape[0], -1).double().numpy()

    @property
    def vocabulary(self) -> dict[str, int]:
        return dict(self._vectorizer.vocabulary_) if self.kind_ == "text" else {}

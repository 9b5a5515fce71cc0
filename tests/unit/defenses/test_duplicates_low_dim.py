"""Near duplicates of arrays: relative Euclidean radius, no transitive chaining, no false flags on small
clean tables (a cosine on 4 standardised columns grouped 99% of breast-cancer rows)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer, load_iris, load_wine

from modelshield.defenses.data import find_duplicates, validate_dataset
from modelshield.errors import ConfigError


def _breast_cancer_4() -> tuple[np.ndarray, np.ndarray]:
    """The README's tumour table: 4 columns of the Wisconsin breast-cancer data."""
    bc = load_breast_cancer()
    names = list(bc.feature_names)
    cols = [names.index(c) for c in ("worst radius", "worst concave points", "mean texture", "worst area")]
    return np.asarray(bc.data[:, cols], dtype=np.float64), np.asarray(bc.target)


def _tables() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    bc = load_breast_cancer()
    return {"breast-cancer-4": _breast_cancer_4(), "breast-cancer-30": (bc.data, bc.target),
            "iris": load_iris(return_X_y=True), "wine": load_wine(return_X_y=True)}


@pytest.mark.parametrize("name", ["breast-cancer-4", "breast-cancer-30", "iris", "wine"])
def test_clean_low_dimensional_tables_have_almost_no_near_duplicates(name: str) -> None:
    x, y = _tables()[name]
    rep = find_duplicates(x, y)
    near_rows = sum(len(g.indices) - 1 for g in rep.groups if g.kind == "near")
    assert near_rows <= 0.01 * len(y), rep.to_dict()
    assert not rep.conflicting_rows.any()
    assert rep.radius is not None and rep.radius > 0 and rep.near_radius == pytest.approx(0.13)
    removed = validate_dataset(x, torch.as_tensor(y), checks=("duplicates",)).removed
    assert int(removed.sum()) == 0


def test_planted_near_copies_with_flipped_labels_are_found() -> None:
    x, y = _breast_cancer_4()
    rng = np.random.default_rng(0)
    src = rng.choice(len(y), 20, replace=False)
    copies = x[src] + rng.normal(0.0, 1e-3, (20, x.shape[1])) * x.std(0)
    xp, yp = np.vstack([x, copies]), np.concatenate([y, 1 - y[src]])
    rep = find_duplicates(xp, yp)
    groups = [set(g.indices) for g in rep.groups if g.conflicting]
    for k, s in enumerate(src):
        assert any({int(s), len(y) + k} <= g for g in groups), (k, s)
    assert rep.duplicate_rows[len(y):].all()
    removed = validate_dataset(xp, torch.as_tensor(yp), checks=("duplicates",)).removed
    assert int(removed.sum()) >= 20  # a tie: both rows of each conflicting pair are suspect


def test_near_groups_do_not_chain() -> None:
    """A chain 10.0, 10.1, 10.2, 10.3 with steps under the radius (0.13 of the median spacing 1)
    is two groups, each within the radius of its first row, not one; an exact copy of a row
    follows that row's group."""
    grid = np.arange(40, dtype=np.float64)
    chain = np.array([100.0, 100.1, 100.2, 100.3, 100.1])
    x = np.concatenate([grid, chain])[:, None]
    rep = find_duplicates(x)
    assert [g.indices for g in rep.groups] == [(40, 41, 44), (42, 43)]
    assert [g.kind for g in rep.groups] == ["near", "near"]
    assert find_duplicates(x, near_threshold=None).groups[0].indices == (41, 44)


def test_bad_radius_is_refused() -> None:
    with pytest.raises(ConfigError, match="near_radius"):
        find_duplicates(np.zeros((3, 2)), near_radius=0.0)

"""``modelshield.experiments.physical``: a patch learned on the training split, tested on held-out
points, and its files (what ``modelshield attack physical`` runs), called as a library."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from modelshield.attacks.physical import AdversarialPatch, UniversalPerturbation
from modelshield.errors import ConfigError, DataError
from modelshield.experiments.physical import (
    EXAMPLES,
    STRENGTHS,
    learn_and_evaluate,
    save_pattern_files,
    train_split,
)
from modelshield.targets import Target, load_target


@pytest.fixture(scope="module")
def target() -> Target:
    return load_target("digits-cnn", data=None, data_dir=None, arch=None, n=30)


def test_a_patch_is_learned_on_train_tested_on_held_out_points_and_written(target: Target,
                                                                                tmp_path: Path) -> None:
    train = train_split(target, 100)
    assert train[0].shape == (100, 1, 8, 8) and train[1].dtype == torch.long
    # held out: no training image is one of the assessment points
    assert not any(torch.equal(a, b) for a in target.x for b in train[0])
    run = learn_and_evaluate(AdversarialPatch(size=0.1, steps=20, seed=0), target, train, draws=2)
    assert run.n_train == 100 and [e.strength for e in run.curve] == list(STRENGTHS)
    assert run.evaluation is run.curve[STRENGTHS.index(1.0)]
    clean, adv, clean_pred, adv_pred = run.examples
    assert clean.shape[0] == adv.shape[0] == EXAMPLES and not torch.equal(clean, adv)
    model = target.adapted()
    assert torch.equal(clean_pred, model.predict(clean)) and torch.equal(adv_pred, model.predict(adv))
    saved = save_pattern_files(run, png=tmp_path / "p.png", tensors=tmp_path / "p.pt",
                               sheet=tmp_path / "s.png", bounds=target.bounds)
    loaded = torch.load(tmp_path / "p.pt", weights_only=True)
    assert torch.equal(loaded["pattern"], run.pattern.pattern.cpu())
    assert saved["tensors"] == {"pattern": list(run.pattern.pattern.shape)}
    assert (tmp_path / "p.png").stat().st_size > 0 and (tmp_path / "s.png").stat().st_size > 0


def test_a_universal_perturbation_has_no_strength_curve(target: Target) -> None:
    atk = replace(UniversalPerturbation(eps=0.1, seed=0), max_passes=1)
    run = learn_and_evaluate(atk, target, train_split(target, 50), draws=1)
    assert run.curve == [] and run.pattern.kind == "universal"


def test_no_training_split_and_a_query_only_target_are_refused(target: Target) -> None:
    class Empty:
        x_train = torch.zeros(0, 1, 8, 8)
        y_train = torch.zeros(0, dtype=torch.long)

    with pytest.raises(DataError, match="must have a training split"):
        train_split(replace(target, data=Empty()), 10)
    blind = load_target("phishing-gbm", data=None, data_dir=None, arch=None, n=10)
    with pytest.raises(ConfigError, match="query-only"):
        learn_and_evaluate(AdversarialPatch(size=0.1, steps=1), blind, (blind.x, blind.y))

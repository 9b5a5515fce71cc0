"""The extraction section's pool for zoo models (issue #16): a tabular zoo model's thief queries the
rows of its own data set's training split, not uniform noise over the feature box."""

from __future__ import annotations

import pytest
import torch

from modelshield.assess import AssessmentPlan, ExtractionPlan
from modelshield.assess._section import AssessmentContext
from modelshield.assess.sections import ExtractionSection
from modelshield.errors import MissingDataError


def _phishing_ctx(budgets: tuple[int, ...]) -> AssessmentContext:
    from modelshield.targets import load_target

    try:
        target = load_target("phishing-logreg", data=None, data_dir=None, arch=None, n=40)
    except MissingDataError as exc:
        pytest.skip(f"phishing data not available: {exc}")
    plan = AssessmentPlan(sections=("extraction",), extraction=ExtractionPlan(budgets=budgets, epochs=10))
    return AssessmentContext(model=target.adapted(), x=target.x, y=target.y, plan=plan,
                            model_info=target.model_info, data_info=target.data_info, bounds=target.bounds,
                            seed=0, batch_size=64)


def test_tabular_zoo_pool_is_the_rows_of_its_training_split() -> None:
    from modelshield.data import load_tabular_dataset

    ctx = _phishing_ctx((50, 200))
    warnings: list[str] = []
    pool = ExtractionSection()._pool(ctx, warnings)
    tab = load_tabular_dataset("phishing-websites", deduplicate=bool(ctx.data_info.get("deduplicated")))
    assert pool.kind == "train-split" and not warnings
    assert torch.equal(pool.x, tab.x_train.clamp(*ctx.bounds))  # the rows themselves, in order
    assert set(torch.unique(pool.x).tolist()) <= {-1.0, 0.0, 1.0}  # the data's levels: not noise
    assert ExtractionSection(pool="noise")._pool(ctx, warnings).kind == "noise"  # an explicit pool wins


@pytest.mark.slow
def test_tabular_zoo_pool_is_its_training_split_and_beats_noise() -> None:
    from modelshield.data import load_tabular_dataset

    ctx = _phishing_ctx((50, 200))
    section = ExtractionSection(defences=("top1",), jacobian=False)(ctx, None)
    pool = section.metrics["pool"]
    tab = load_tabular_dataset("phishing-websites", deduplicate=bool(ctx.data_info.get("deduplicated")))
    assert pool["kind"] == "train-split" and pool["relation"] == "same-distribution"
    assert pool["n"] == tab.x_train.shape[0] and pool["sha256"] == tab.sha256
    assert pool["name"] == "phishing-websites training split"
    own, chance = section.metrics["extraction_fidelity"], section.metrics["chance_fidelity"]
    assert own > chance + 0.2, (own, chance)  # same-distribution queries copy a linear model well
    noise = ExtractionSection(defences=("top1",), jacobian=False, pool="noise")(ctx, None).metrics
    assert noise["pool"]["kind"] == "noise"
    assert own > noise["extraction_fidelity"] + 0.05, (own, noise["extraction_fidelity"])

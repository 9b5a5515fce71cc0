"""Text model extraction (TextExtraction) and the extraction section on text models (issue #16).

The victim is a keyword rule over generated messages: a message is spam when it holds one of ten
keywords. A thief that sees few answers cannot know most keywords; with more answers its TF-IDF
copy learns them, so fidelity must grow with the budget, and every pool text sent must be
exactly one counted victim query.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from modelshield.assess import AssessmentPlan, ExtractionPlan
from modelshield.assess._section import AssessmentContext
from modelshield.assess.sections import ExtractionSection
from modelshield.attacks.extraction import TextExtraction
from modelshield.errors import ConfigError
from modelshield.models import CallableModel, as_text_model

KEYWORDS = ("free", "win", "prize", "claim", "cash", "urgent", "bonus", "offer", "winner", "credit")
NEUTRAL = tuple(f"word{k}" for k in range(80))


def _corpus(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    texts = []
    for _ in range(n):
        words = list(rng.choice(NEUTRAL, size=6))
        if rng.random() < 0.35:
            words.insert(int(rng.integers(0, 6)), str(rng.choice(KEYWORDS)))
        texts.append(" ".join(words))
    return texts


def keyword_victim(texts: list[str]) -> np.ndarray:
    """P(spam) high when a keyword is present (a user's text callable)."""
    hit = np.array([any(w in KEYWORDS for w in t.split()) for t in texts], dtype=float)
    p = 0.1 + 0.8 * hit
    return np.stack([1.0 - p, p], axis=1)


def _truth(texts: list[str]) -> torch.Tensor:
    return torch.as_tensor(keyword_victim(texts).argmax(1), dtype=torch.long)


def test_fidelity_grows_with_the_budget_and_queries_are_counted() -> None:
    pool, test = _corpus(400, seed=0), _corpus(200, seed=1)
    victim = as_text_model(keyword_victim)
    res = TextExtraction(budget=300, checkpoints=(10, 60), output="labels", seed=0)(
        victim, pool, eval_data=(test, _truth(test)))
    assert [p.queries for p in res.curve] == [10, 60, 300]
    assert res.queries == 300 and res.eval_queries == len(test)
    assert victim.queries.forward == 300 + len(test)  # the victim's own counter: budget + verification
    fids = [p.fidelity for p in res.curve]
    assert fids[-1] >= 0.95 and fids[-1] > fids[0] + 0.05, fids
    # the victim's labels were re-queried: fidelity against them equals a recomputation here
    assert res.victim_labels is not None and torch.equal(res.victim_labels, _truth(test))
    pred = res.copy.predict(test)
    assert res.fidelity == pytest.approx(float((pred == res.victim_labels.numpy()).mean()))


def test_seeded_and_batch_independent() -> None:
    pool, test = _corpus(150, seed=2), _corpus(60, seed=3)

    def run(batch_size: int, seed: int) -> list[tuple[int, float, float]]:
        res = TextExtraction(budget=100, checkpoints=(20,), output="proba", batch_size=batch_size, seed=seed)(
            keyword_victim, pool, eval_data=(test, _truth(test)))
        return [(p.queries, p.fidelity, p.accuracy) for p in res.curve]

    assert run(7, 0) == run(256, 0)
    assert run(256, 0) == run(256, 0)


def test_a_pool_smaller_than_the_budget_is_refused() -> None:
    with pytest.raises(ConfigError, match="at least 'budget'=50"):
        TextExtraction(budget=50)(keyword_victim, _corpus(10, seed=0))
    with pytest.raises(ConfigError):
        TextExtraction(budget=10, checkpoints=(20,))


def _text_ctx(train: tuple[Any, torch.Tensor] | None, test: list[str],
              budgets: tuple[int, ...]) -> AssessmentContext:
    y = _truth(test)

    def over_rows(rows: np.ndarray) -> np.ndarray:
        return keyword_victim([test[round(float(i))] for i in np.asarray(rows).reshape(len(rows), -1)[:, 0]])

    x = torch.arange(len(test), dtype=torch.float32).unsqueeze(1)
    return AssessmentContext(
        model=CallableModel(over_rows, bounds=(0.0, float(len(test) - 1)), output="proba", n_classes=2),
        x=x, y=y, plan=AssessmentPlan(sections=("extraction",), extraction=ExtractionPlan(budgets=budgets)),
        model_info={"name": "userbits:predict", "modality": "text", "source": "callable"},
        data_info={"name": "messages.tsv", "sha256": "cd" * 32, "format": "tsv",
                   "points": "row indices into the test split"},
        bounds=(0.0, float(len(test) - 1)), seed=0, batch_size=64, texts=tuple(test),
        text_model=keyword_victim, train=train)


def test_extraction_section_steals_a_users_text_model() -> None:
    pool, test = _corpus(250, seed=4), _corpus(80, seed=5)
    ctx = _text_ctx((tuple(pool), _truth(pool)), test, budgets=(10, 200, 1000))
    section = ExtractionSection()(ctx, None)
    m = section.metrics
    assert not m.get("skipped"), section.summary
    assert m["pool"]["kind"] == "train-split" and m["pool"]["n"] == 250 and m["pool"]["sha256"] == "cd" * 32
    assert m["budget"] == 250
    assert any("fewer than the largest query budget 1000" in w for w in section.warnings)
    assert set(m["runs"]) == {"proba", "labels"}
    for run in m["runs"].values():
        assert run["queries"] == 250 and run["eval_queries"] == len(test)
        assert [p["queries"] for p in run["curve"]] == [10, 200, 250]
        assert run["curve"][-1]["fidelity"] > run["curve"][0]["fidelity"]
    assert m["extraction_fidelity"] == max(r["curve"][-1]["fidelity"] for r in m["runs"].values())
    assert section.atlas[0]["id"] == "AML.T0024.002" and section.severity != "none"
    assert "Krishna" in " ".join(section.findings)


def test_extraction_section_without_training_texts_says_why() -> None:
    test = _corpus(30, seed=6)
    section = ExtractionSection()(_text_ctx(None, test, budgets=(10,)), None)
    assert section.metrics["skipped"] and "no training split of texts" in section.metrics["reason"]


@pytest.mark.slow  # trains the spam-nb zoo model on first use
def test_extraction_section_on_the_spam_zoo_model_queries_the_sms_training_split() -> None:
    from modelshield.errors import MissingDataError
    from modelshield.targets import load_target

    try:
        target = load_target("spam-nb", data=None, data_dir=None, arch=None, n=150)
    except MissingDataError as exc:
        pytest.skip(f"SMS spam data not available: {exc}")
    plan = AssessmentPlan(sections=("extraction",), extraction=ExtractionPlan(budgets=(30, 300)))
    ctx = AssessmentContext(model=target.adapted(), x=target.x, y=target.y, plan=plan,
                            model_info=target.model_info, data_info=target.data_info, bounds=target.bounds,
                            seed=0, batch_size=64, texts=target.texts)
    m = ExtractionSection()(ctx, None).metrics
    assert m["pool"]["name"] == "sms-spam training split" and m["pool"]["n"] > 4000
    assert m["pool"]["sha256"] == target.data_info["sha256"]
    for run in m["runs"].values():
        assert run["queries"] == 300 and run["eval_queries"] == 150
        assert run["curve"][1]["fidelity"] > run["curve"][0]["fidelity"]
    # the victim's labels on the assessment texts are the zoo model's own
    victim = target.module.predict(list(target.texts))
    assert m["chance_fidelity"] == pytest.approx(float(np.bincount(victim).max()) / 150)

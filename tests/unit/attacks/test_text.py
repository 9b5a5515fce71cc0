"""Text evasion: the word budget is never exceeded and every success holds on a fresh query."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from modelshield.attacks.evasion import text as text_evasion
from modelshield.attacks.evasion.text import (
    TextEvasion,
    char_candidates,
    edit_distance,
    lexicon,
    words_changed,
)
from modelshield.data.sms_spam import TextDataset, load_sms_spam
from modelshield.errors import ConfigError, InputError, QueryBudgetExceeded
from modelshield.models import TextModel, as_text_model
from modelshield.zoo.spam import spam_metrics, train_spam_model


@pytest.fixture(scope="module")
def spam() -> TextDataset:
    root = Path(os.environ.get("MODELSHIELD_DATA", ""))
    if not (root / "sms-spam" / "SMSSpamCollection").is_file():
        pytest.skip("SMS spam data not found; set MODELSHIELD_DATA")
    return load_sms_spam(root)


@pytest.fixture(scope="module")
def nb(spam: TextDataset) -> Any:
    return train_spam_model("nb", spam)


@pytest.fixture(scope="module")
def batch(spam: TextDataset) -> tuple[list[str], torch.Tensor]:
    idx = [i for i, v in enumerate(spam.y_test.tolist()) if v == 1][:40] + list(range(10))
    return [spam.texts_test[i] for i in idx], spam.y_test[idx]


def test_reference_models_are_good_spam_filters(spam: TextDataset, nb: Any) -> None:
    m = spam_metrics(nb, spam.texts_test, spam.y_test)
    assert m["precision"] > 0.95 and m["recall"] > 0.8 and m["f1"] > 0.9
    assert 0.9 < m["accuracy"] <= 1.0


def test_edit_distance_by_hand() -> None:
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("", "abc") == 3 and edit_distance("abc", "abc") == 0
    assert words_changed("win a free prize now", "win a fr.ee prize now ok lol") == 3
    assert words_changed("a b c", "b c") == 1


def test_char_candidates_break_the_token_but_keep_one_word() -> None:
    gen = torch.Generator().manual_seed(0)
    cands = char_candidates("prize", ("homoglyph", "leet", "separator", "invisible", "typo"), gen)
    assert len(cands) == 5 and "prize" not in cands
    assert all(len(c.split()) == 1 for c in cands)
    assert "pr.ize" in cands and "pr\u200bize" in cands and "pr1ze" in cands
    assert char_candidates("a", ("leet",), gen) == []
    assert "reward" in lexicon()["prize"]


@pytest.mark.parametrize("method", ["char", "word", "goodword", "combined"])
@pytest.mark.parametrize("frac", [0.1, 0.2])
def test_budget_never_exceeded_and_success_reverified(
    nb: Any, batch: tuple[list[str], torch.Tensor], method: str, frac: float
) -> None:
    texts, y = batch
    texts_before = list(texts)
    res = TextEvasion(method=method, max_word_fraction=frac)(nb, texts, y)
    assert texts == texts_before
    for clean, adv, wc in zip(texts, res.texts_adv, res.words_changed.tolist(), strict=True):
        allowed = int(np.floor(frac * len(clean.split()) + 1e-9))
        independent = edit_distance(clean.split(), adv.split())
        assert independent <= allowed and independent == wc
    # ham rows are never touched
    for i in (y == 0).nonzero().flatten().tolist():
        assert res.texts_adv[i] == texts[i]
    # re-check every success with an independent query
    pred = nb.predict(list(res.texts_adv))
    assert torch.equal(torch.as_tensor(pred), res.adv_pred)
    assert bool((pred[res.success.numpy()] == 0).all())
    assert torch.equal(res.success, res.attacked & (torch.as_tensor(pred) != y))
    d = res.to_dict()
    assert d["successes"] == int(res.success.sum()) and d["queries_forward"] > 0


def test_bigger_budget_evades_more(nb: Any, batch: tuple[list[str], torch.Tensor]) -> None:
    texts, y = batch
    small = TextEvasion(method="combined", max_word_fraction=0.1)(nb, texts, y)
    big = TextEvasion(method="combined", max_word_fraction=0.6)(nb, texts, y)
    assert big.success_rate > small.success_rate
    assert big.success_rate > 0.5
    zero = TextEvasion(method="char", max_word_fraction=0.0)(nb, texts, y)
    assert zero.texts_adv == tuple(texts) and not bool(zero.success.any())


def test_queries_are_counted_and_budgeted(nb: Any, batch: tuple[list[str], torch.Tensor]) -> None:
    texts, y = batch
    model = TextModel(nb)
    res = TextEvasion(method="char", max_word_fraction=0.2, max_queries=15)(model, texts, y)
    assert res.queries_forward == model.queries.forward
    assert int(res.point_queries.max()) <= 15
    assert res.queries_forward >= len(texts) * 2  # clean scoring plus the verification query
    with pytest.raises(QueryBudgetExceeded, match="query budget"):
        TextEvasion(method="char")(TextModel(nb, budget=60), texts, y)


def test_callable_model_and_bad_inputs(nb: Any) -> None:
    calls: list[int] = []

    def fn(batch: list[str]) -> Any:
        calls.append(len(batch))
        return nb.predict_proba(batch)

    res = TextEvasion(method="word", max_word_fraction=0.5)(fn, ["WIN a FREE prize now call"], [1])
    assert sum(calls) == res.queries_forward
    with pytest.raises(InputError, match=r"texts\[1\] must be a non-empty text"):
        TextEvasion()(nb, ["hello there", ""], [0, 0])
    with pytest.raises(InputError, match="one per text"):
        TextEvasion()(nb, ["hello there"], [0, 1])
    with pytest.raises(InputError, match="got 5 at row 0"):
        TextEvasion()(nb, ["hello there"], [5])
    with pytest.raises(ConfigError, match="max_word_fraction"):
        TextEvasion(max_word_fraction=1.5)
    with pytest.raises(ConfigError, match="method"):
        TextEvasion(method="emoji")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="char_ops"):
        TextEvasion(char_ops=("rot13",))


def test_text_model_lives_in_models_and_is_re_exported() -> None:
    assert text_evasion.TextModel is TextModel and text_evasion.as_text_model is as_text_model
    assert TextModel.__module__ == "modelshield.models.text"
    m = as_text_model(lambda texts: np.tile([[0.25, 0.75]], (len(texts), 1)))
    assert as_text_model(m) is m and m.predict(["a", "b"]).tolist() == [1, 1] and m.queries.forward == 2

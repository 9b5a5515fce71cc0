"""Text evasion on classifiers that are not binary spam filters (held-out #16).

TextEvasion attacked only rows of ``spam_class`` (1) and its good-word ranking used one class for
every row, so on a 3-class topic model only class-1 rows counted and the other two classes were
never attacked. Now ``goal`` says what the attacker wants: ``"malicious"`` (a two-class spam
filter, detected spam made to pass) or ``"any"`` (untargeted: any label change of a correctly
classified row, any number of classes); ``"auto"`` picks by the model's output count, and the
assessment section picks from the data's class names (``text_evasion_goal``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modelshield.assess import AssessmentPlan
from modelshield.assess._section import AssessmentContext
from modelshield.assess.sections.spam import TextEvasionSection, text_evasion_goal
from modelshield.attacks.evasion.text import TextEvasion
from modelshield.errors import ConfigError
from modelshield.models import as_model

TOPICS = {0: ("pizza", "bread", "cheese", "sauce"), 1: ("goal", "match", "team", "coach"),
          2: ("software", "chip", "cloud", "server")}
FILLER = ("the", "a", "of", "and", "to", "in", "on", "with", "for", "today", "very", "new")
BIAS = np.array([0.0, 0.01, 0.02])  # breaks ties, so every prediction is unambiguous


def topic3(texts: list[str]) -> np.ndarray:
    """3-class probabilities: softmax of 3 x (count of each topic's words) (+ a tiny bias)."""
    counts = np.array([[sum(w in TOPICS[c] for w in t.lower().split()) for c in range(3)] for t in texts],
                      dtype=float)
    z = 3 * counts + BIAS
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def corpus(n: int = 18, seed: int = 0) -> tuple[list[str], torch.Tensor]:
    """Ten-word texts: two words of the row's topic, one of another topic, seven fillers."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for i in range(n):
        c = i % 3
        other = (c + 1 + int(rng.integers(2))) % 3
        words = [*rng.choice(TOPICS[c], 2, replace=False), rng.choice(TOPICS[other]),
                 *rng.choice(FILLER, 7)]
        rng.shuffle(words)
        texts.append(" ".join(str(w) for w in words))
        labels.append(c)
    return texts, torch.tensor(labels)


def test_untargeted_goal_attacks_every_class_of_a_3_class_model() -> None:
    texts, y = corpus()
    assert bool((torch.as_tensor(topic3(texts)).argmax(1) == y).all())  # all classified correctly
    res = TextEvasion(method="char", max_word_fraction=0.2)(topic3, texts, y)
    assert res.goal == "any" and res.to_dict()["goal"] == "any"
    assert torch.equal(res.eligible, res.clean_pred == y)  # every correct row, not only class 1
    assert int(res.eligible.sum()) == len(texts)
    succeeded = set(y[res.success].tolist())
    assert succeeded == {0, 1, 2}, succeeded  # rows of every class change label
    assert bool((res.adv_pred[res.success] != y[res.success]).all())
    assert bool((res.words_changed <= res.max_words).all())
    # two own-topic words out of ten: breaking both (the 20% budget) always flips the label
    assert res.success_rate == 1.0
    d = res.to_dict()
    assert d["accuracy_before"] == 1.0 and d["accuracy_after"] == pytest.approx(1 - res.success_rate)
    assert "recall_before" not in d


def test_malicious_goal_keeps_the_spam_filter_semantics() -> None:
    texts, y = corpus()
    binary = (y == 1).long()  # class 1 ("sport") against the rest, scored by a 2-output model

    def two(ts: list[str]) -> np.ndarray:
        p = topic3(ts)
        return np.stack([p[:, 0] + p[:, 2], p[:, 1]], 1)

    auto = TextEvasion(method="char", max_word_fraction=0.2)(two, texts, binary)
    assert auto.goal == "malicious"  # two outputs: the spam-filter goal, as before
    assert torch.equal(auto.eligible, (binary == 1) & (auto.clean_pred == binary))
    assert not bool(auto.attacked[binary == 0].any())
    assert "recall_before" in auto.to_dict()
    every = TextEvasion(method="char", max_word_fraction=0.2, goal="any")(two, texts, binary)
    assert every.goal == "any" and bool(every.attacked[binary == 0].any())
    with pytest.raises(ConfigError, match=r"'spam_class' must be one of the model's classes 0\.\.2.*got 5"):
        TextEvasion(goal="malicious", spam_class=5)(topic3, texts, y)
    with pytest.raises(ConfigError, match="'goal' must be one of"):
        TextEvasion(goal="spam")  # type: ignore[arg-type]


def test_targeted_good_words_rank_by_the_target_class() -> None:
    texts, y = corpus()
    target = (y + 1) % 3
    pool = tuple(w for c in range(3) for w in TOPICS[c])
    attack = TextEvasion(method="goodword", max_word_fraction=0.3, good_words=pool)
    res = attack(topic3, texts, y, target=target)
    # three words of the target topic outweigh the two own-topic words: every row reaches its target
    assert res.success_rate == 1.0
    assert torch.equal(res.adv_pred, target)
    for clean, adv, t in zip(res.texts, res.texts_adv, target.tolist(), strict=True):
        added = adv[len(clean):].split()
        assert added and all(w in TOPICS[t] for w in added)


@pytest.mark.parametrize(("classes", "expected"), [
    (["ham", "spam"], ("malicious", 1)),
    (["SPAM", "ok"], ("malicious", 0)),
    (["legit", "phish"], ("malicious", 1)),
    (["food", "sport", "tech"], ("any", None)),
    (["0", "1"], ("any", None)),
    (["spam", "junk"], ("any", None)),  # both malicious-looking: no benign side
    (None, ("any", None)),
])
def test_text_evasion_goal_from_class_names(classes: list[str] | None,
                                            expected: tuple[str, int | None]) -> None:
    assert text_evasion_goal(classes) == expected


def test_section_on_a_3_class_text_model_names_the_untargeted_goal() -> None:
    texts, y = corpus(n=12)

    def over_rows(rows: np.ndarray) -> np.ndarray:
        return topic3([texts[int(i)] for i in np.asarray(rows).reshape(len(rows), -1)[:, 0]])

    ctx = AssessmentContext(
        model=as_model(over_rows, bounds=(0.0, float(len(texts))), n_classes=3),
        x=torch.arange(len(texts), dtype=torch.float32)[:, None], y=y, plan=AssessmentPlan(),
        model_info={"name": "topic3", "modality": "text", "source": "callable"},
        data_info={"name": "news3", "classes": ["food", "sport", "tech"]},
        bounds=(0.0, float(len(texts))), seed=0, batch_size=64, texts=tuple(texts), text_model=topic3)
    section = TextEvasionSection(methods=("char",), budgets=(0.2,), headline_budget=0.2)(ctx, None)
    assert section.metrics["goal"] == "any" and section.metrics["malicious_label"] is None
    assert section.metrics["eligible"] == len(texts)  # every class, not only class 1
    assert section.headline["text_evasion_success_rate"] == 1.0
    assert "correctly classified messages change label" in section.summary
    assert "spam" not in section.summary and "untargeted" in section.title
    assert any("untargeted" in f and "'food', 'sport', 'tech'" in f for f in section.findings)
    assert section.provenance["goal"] == "any"
    short = TextEvasionSection(methods=("goodword",), budgets=(0.1,), headline_budget=0.1)(ctx, None)
    assert short.headline["text_evasion_success_rate"] == 0.0  # one English ham word moves no topic
    assert "(median n/a words changed)" in short.summary and "None" not in " ".join(short.findings)


def test_section_names_the_malicious_label_of_a_spam_task() -> None:
    texts, y = corpus(n=12)
    binary = (y == 1).long()

    def two(ts: list[str]) -> np.ndarray:
        p = topic3(ts)
        return np.stack([p[:, 0] + p[:, 2], p[:, 1]], 1)

    def over_rows(rows: np.ndarray) -> np.ndarray:
        return two([texts[int(i)] for i in np.asarray(rows).reshape(len(rows), -1)[:, 0]])

    ctx = AssessmentContext(
        model=as_model(over_rows, bounds=(0.0, float(len(texts))), n_classes=2),
        x=torch.arange(len(texts), dtype=torch.float32)[:, None], y=binary, plan=AssessmentPlan(),
        model_info={"name": "two", "modality": "text", "source": "callable"},
        data_info={"name": "mail", "classes": ["ok", "junk"]},
        bounds=(0.0, float(len(texts))), seed=0, batch_size=64, texts=tuple(texts), text_model=two)
    section = TextEvasionSection(methods=("char",), budgets=(0.2,), headline_budget=0.2)(ctx, None)
    assert section.metrics["goal"] == "malicious"
    assert (section.metrics["malicious_label"], section.metrics["benign_label"]) == ("junk", "ok")
    assert section.metrics["eligible"] == int((binary == 1).sum())
    assert "detected 'junk' messages pass as 'ok'" in section.summary

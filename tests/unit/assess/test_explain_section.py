"""The "explain" report section: worst evasions re-verified and explained, the attribution method's
sanity check with its fallback, the backdoor finding, tabular and text models."""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from modelshield.assess import SECTIONS, AssessmentContext, AssessmentPlan, Section, register_section, run
from modelshield.assess.plan import ExplainPlan
from modelshield.assess.sections import ExplainSection
from modelshield.assess.sections.explain import trigger_mass, worst_evasions
from modelshield.attacks.backdoor import BadNets, make_train_fn
from modelshield.attacks.evasion.registry import build_attack
from modelshield.data import load_digits
from modelshield.models import TorchModel, as_model

PNG = b"\x89PNG\r\n\x1a\n"
CLASSES = [str(i) for i in range(10)]


@pytest.fixture(scope="module")
def digits() -> Any:
    return load_digits()


@pytest.fixture(scope="module")
def cnn(digits: Any) -> nn.Module:
    """A small digits CNN (the zoo's cnn-8x8 recipe, 5 epochs: ~95% test accuracy, seconds to train)."""
    return make_train_fn("cnn-8x8", epochs=5, batch_size=64)(digits.x_train, digits.y_train)


def _ctx(model: Any, x: Tensor, y: Tensor, *, plan: ExplainPlan | None = None,
         earlier: dict[str, Section] | None = None, **extra: Any) -> AssessmentContext:
    m = as_model(model) if isinstance(model, nn.Module) else model
    return AssessmentContext(
        model=m, x=x, y=y, plan=AssessmentPlan(sections=("explain",), explain=plan or ExplainPlan()),
        model_info=extra.pop("model_info", {"name": "m"}),
        data_info=extra.pop("data_info", {"name": "digits", "classes": CLASSES}),
        bounds=(0.0, 1.0), seed=0, batch_size=250, earlier=earlier or {}, **extra)


def _is_png(b64: str) -> bool:
    return base64.b64decode(b64, validate=True).startswith(PNG)


@pytest.fixture(scope="module")
def image_section(cnn: nn.Module, digits: Any) -> Section:
    return ExplainSection()(_ctx(cnn, digits.x_test[:150], digits.y_test[:150]), None)


def test_registered_and_opt_in() -> None:
    assert isinstance(SECTIONS["explain"], ExplainSection)
    assert "explain" not in AssessmentPlan().sections
    plan = AssessmentPlan(sections=("evasion", "explain"), explain=ExplainPlan(worst=2))
    assert plan.to_dict()["explain"]["worst"] == 2
    assert "explain" not in AssessmentPlan(sections=("evasion",)).to_dict()


def test_worst_evasions_are_misclassified_when_rerun(cnn: nn.Module, digits: Any) -> None:
    m = as_model(cnn)
    assert isinstance(m, TorchModel)
    x, y = digits.x_test[:64], digits.y_test[:64]
    res = build_attack("pgd", eps=0.1, steps=20, seed=0)(m, x, y)
    worst = worst_evasions(m, res)
    assert worst.index.numel() > 0
    with torch.no_grad():
        probs = m.scores(res.x_adv[worst.index]).softmax(1)
    pred = probs.argmax(1)
    assert bool((pred != y[worst.index]).all())  # really fooled, queried again
    assert torch.equal(pred, worst.adv_pred)
    assert bool((y[worst.index] == res.clean_pred[worst.index]).all())  # were correct before
    conf = probs.max(1).values
    assert torch.allclose(conf, worst.confidence, atol=1e-5)
    assert bool((worst.confidence[:-1] >= worst.confidence[1:]).all())  # most confident mistake first


def test_worst_evasions_drop_successes_the_model_does_not_confirm(cnn: nn.Module, digits: Any) -> None:
    m = as_model(cnn)
    assert isinstance(m, TorchModel)
    x, y = digits.x_test[:64], digits.y_test[:64]
    res = build_attack("pgd", eps=0.1, steps=20, seed=0)(m, x, y)
    liar = dataclasses.replace(res, x_adv=x.clone(), success=res.clean_pred == y)  # claims, never fooled
    assert worst_evasions(m, liar).index.numel() == 0


def test_image_section_shows_heatmaps_and_rank_correlation(image_section: Section) -> None:
    s = image_section
    assert s.id == "explain" and s.severity == "none" and not s.warnings
    m = s.metrics
    assert m["method"] == "saliency" and m["evasions"] > 0
    worst = min(ExplainPlan().worst, m["evasions"])
    heat = [f for f in s.figures if f.title.startswith("Evasion")]
    assert len(heat) == 2 * worst  # clean and adversarial for each worst evasion
    assert all(_is_png(f.png_base64) and f.how_to_read for f in s.figures)
    rho = m["attribution_rank_correlation"]
    assert len(rho) == m["evasions"] and all(-1.0 <= r <= 1.0 for r in rho)
    assert s.headline["explain_rank_correlation"] == pytest.approx(sum(rho) / len(rho), abs=1e-3)
    table = next(t for t in s.tables if t.title.startswith("Worst evasions"))
    assert all(r[1] != r[2] for r in table.rows)  # true class != adversarial class
    assert m["sanity"]["methods"]["saliency"]["verdict"] == "passes"
    assert any("no suspected trigger" in f for f in s.findings)
    assert {a["id"] for a in s.atlas} == {"AML.T0043"}
    assert s.provenance["explainer"]["class"] == "Saliency" and "explain:pgd" in s.provenance["attacks"]


def test_guided_backprop_fails_the_sanity_check_and_falls_back(cnn: nn.Module, digits: Any) -> None:
    s = ExplainSection()(_ctx(cnn, digits.x_test[:80], digits.y_test[:80],
                              plan=ExplainPlan(method="guided-backprop", n=32)), None)
    assert s.severity == "low"
    assert len(s.warnings) == 1 and "guided-backprop is untrustworthy" in s.warnings[0]
    assert any("guided-backprop is untrustworthy" in f for f in s.findings)
    assert "untrustworthy" in s.summary
    sanity = s.metrics["sanity"]
    assert sanity["methods"]["guided-backprop"]["verdict"] == "untrustworthy"
    assert sanity["used"] == s.metrics["method"] != "guided-backprop"
    assert sanity["methods"][s.metrics["method"]]["verdict"] == "passes"
    assert s.provenance["explainer"]["class"] != "GuidedBackprop"


def test_no_backdoor_finding_is_one_line(cnn: nn.Module, digits: Any) -> None:
    clean_bd = Section(id="backdoor", title="b", summary="none", severity="none",
                       metrics={"flagged_classes": [], "verdict": "no backdoor found"})
    s = ExplainSection()(_ctx(cnn, digits.x_test[:40], digits.y_test[:40], plan=ExplainPlan(n=16),
                              earlier={"backdoor": clean_bd}), None)
    lines = [f for f in s.findings if f.startswith("Backdoor")]
    assert lines == ["Backdoor: no backdoor finding to explain (no class flagged)."]
    assert s.metrics["backdoor"]["explained"] is False


def test_backdoor_finding_shows_the_model_looks_at_the_trigger(digits: Any) -> None:
    res = BadNets(target=0, rate=0.05)(None, digits.x_train, digits.y_train)
    model = make_train_fn("cnn-8x8", epochs=10, batch_size=32)(res.x_poisoned, res.y_poisoned)
    flagged = Section(id="backdoor", title="b", summary="flagged", severity="high",
                      metrics={"flagged_classes": [0], "verdict": "backdoor", "n_clean": 100, "steps": 100})
    s = ExplainSection()(_ctx(model, digits.x_test[:200], digits.y_test[:200], plan=ExplainPlan(n=16),
                              earlier={"backdoor": flagged}), None)
    bd = s.metrics["backdoor"]
    assert bd["explained"] and bd["class"] == 0
    assert bd["stamped_sent_to_class"] > 0.8
    assert bd["attribution_on_trigger_over_area"] > 2.0  # attention concentrates on the trigger
    assert s.severity == "none"  # rated by the backdoor section, not twice
    assert {a["id"] for a in s.atlas} == {"AML.T0043", "AML.T0018"}
    stamped = [f for f in s.figures if f.title.startswith("Backdoor")]
    assert stamped and all(_is_png(f.png_base64) and f.how_to_read for f in stamped)


def test_trigger_mass_is_the_share_on_the_mask() -> None:
    values = torch.zeros(2, 1, 4, 4)
    values[0, 0, 0, 0] = 3.0  # all on the trigger pixel
    values[1, 0, 3, 3] = -1.0  # all off it
    values[1, 0, 0, 0] = 1.0
    mask = torch.zeros(1, 4, 4)
    mask[0, 0, 0] = 1.0
    assert trigger_mass(values, mask).tolist() == pytest.approx([1.0, 0.5])


def test_suite_fills_earlier_sections_as_it_goes(cnn: nn.Module, digits: Any) -> None:
    seen: list[tuple[str, ...]] = []

    @dataclasses.dataclass(frozen=True)
    class Probe:
        id: str

        def __call__(self, ctx: AssessmentContext, progress: Any) -> Section:
            seen.append(tuple(ctx.earlier))
            return Section(id=self.id, title=self.id, summary="", severity="none")

    for sid in ("probe-a", "probe-b"):
        register_section(Probe(sid), replace=True)
    try:
        run(cnn, digits.x_test[:5], digits.y_test[:5], plan=AssessmentPlan(sections=("probe-a", "probe-b")),
            model_info={"name": "m"}, data_info={"name": "d"})
    finally:
        SECTIONS.pop("probe-a")
        SECTIONS.pop("probe-b")
    assert seen == [(), ("probe-a",)]


def test_tabular_tree_model_uses_treeshap_and_finds_the_signal() -> None:
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(300, 6, generator=gen)
    clean = (x[:, 2] > 0.5).long()  # only 'f2' matters: the models learn that
    y = clean.clone()
    y[:15] = 1 - y[:15]  # a few wrong labels in the assessed rows: misclassified rows to explain
    names = [f"f{i}" for i in range(6)]
    info = {"name": "tab", "classes": ["benign", "phishing"], "feature_names": names}
    for est, explainer in ((GradientBoostingClassifier(n_estimators=20, max_depth=2, random_state=0),
                            "TreeShap"), (LogisticRegression(), "PermutationImportance")):
        est.fit(x.numpy(), clean.numpy())
        ctx = _ctx(as_model(est), x, y, data_info=info, user_model=est)
        s = ExplainSection()(ctx, None)
        assert s.severity == "none"
        assert s.metrics["explainer"] == explainer
        assert s.metrics["top_features"][0] == "f2"
        assert s.metrics["misclassified"] > 0
        assert all(_is_png(f.png_base64) and f.how_to_read for f in s.figures)
        evasions, mistakes = s.tables
        assert evasions.title.startswith("Worst constrained evasions") and s.metrics["evasions"] > 0
        assert len(s.figures) == 1 + len(evasions.rows)  # global importance + one per worst evasion
        for row in evasions.rows:  # only f2 decides, so every evasion must have changed it
            assert "f2 " in row[1] and row[2] == "benign"
        assert all(r[1] != r[2] for r in mistakes.rows)  # true != predicted


def test_text_model_highlights_the_spam_token() -> None:
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.naive_bayes import MultinomialNB
    from sklearn.pipeline import make_pipeline

    ham = [f"see you at {w} tomorrow" for w in ("lunch", "home", "work", "school", "noon", "six")]
    spam = [f"win free {w} now" for w in ("cash", "prize", "phone", "trip", "money", "gift")]
    texts = tuple(ham + spam)
    y = torch.tensor([0] * len(ham) + [1] * len(spam))
    pipe = make_pipeline(CountVectorizer(), MultinomialNB()).fit(list(texts), y.numpy())
    x = torch.arange(len(texts), dtype=torch.float32)[:, None]
    ctx = _ctx(as_model(lambda rows: pipe.predict_proba([texts[int(r[0])] for r in rows]), output="proba",
                        n_classes=2, bounds=(0.0, float(len(texts) - 1))),
               x, y, texts=texts, text_model=pipe, model_info={"name": "txt", "modality": "text"},
               data_info={"name": "sms", "classes": ["ham", "spam"]})
    s = ExplainSection()(ctx, None)
    assert s.metrics["explained"] == ExplainPlan().worst
    for row in s.tables[0].rows:
        assert row[1] == "spam" and set(row[3].split(", ")[:2]) <= {"win", "free", "now"}
    assert all(_is_png(f.png_base64) and f.how_to_read for f in s.figures)

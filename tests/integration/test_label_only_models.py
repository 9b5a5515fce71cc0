"""Classifiers without ``predict_proba`` (issue #16: held-out models ``svc_tab``, ``svc_rbf``, ``svc_text``).

* A LinearSVC / SVC() has no probabilities but has ``decision_function``: its margins are the
  scores (argmax checked against ``predict``), so the ``tabular`` and ``blackbox`` sections run
  with numbers instead of "Not run", and the report says the scores are margins.
* Margins that disagree with ``predict`` (or have the wrong shape) are dropped: the model is
  read as label-only, with a note saying why.
* A truly label-only model (``predict`` only) still gets the ``blackbox`` section: HopSkipJump
  runs, Square is skipped with the reason; the ``tabular`` search runs on labels.
* A TF-IDF + LinearSVC text pipeline: text evasion guided by the margins finds at least what it
  finds with labels only (on the held-out SMS pipeline: 50% vs 0%).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from modelshield.assess import AssessmentPlan, run
from modelshield.assess.plan import BlackBoxPlan, TabularPlan
from modelshield.attacks.evasion.text import TextEvasion
from modelshield.cli.app import app
from modelshield.models import CallableModel, TextModel, as_model

runner = CliRunner()
SHORT = ["--n", "30", "--blackbox-n", "10", "--query-budgets", "50", "--hsj-budgets", "50",
         "--max-changes", "1,3", "--eps", "0.3"]


def _rows(n: int = 240, d: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two linearly separable-ish classes in [-1, 1]^d (values rounded to 0.1)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    w = np.linspace(1.0, 0.2, d)
    x = rng.uniform(-1, 1, size=(n, d))
    x[:, 0] = np.clip(x[:, 0] * 0.5 + np.where(y == 1, 0.4, -0.4), -1, 1)
    x[:, 1] = np.clip(x[:, 1] * 0.5 + np.where(y == 1, 0.3, -0.3) * w[1], -1, 1)
    return np.round(x, 1), y


def _write_csv(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    cols = [f"f{j}" for j in range(x.shape[1])]
    lines = [",".join([*cols, "verdict"])]
    for row, label in zip(x, y, strict=True):
        lines.append(",".join([*(f"{v:g}" for v in row), ("legit", "phish")[int(label)]]))
    path.write_text("\n".join(lines) + "\n")


def _sections(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["id"]: s for s in report["sections"]}


class PredictOnly:
    """A classifier that answers labels only: no predict_proba, no decision_function."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.classes_ = inner.classes_

    def predict(self, x: Any) -> Any:
        return self.inner.predict(x)


class WrongMargins:
    """decision_function whose sign is flipped against predict (a broken custom estimator)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.classes_ = inner.classes_

    def predict(self, x: Any) -> Any:
        return self.inner.predict(x)

    def decision_function(self, x: Any) -> Any:
        return -self.inner.decision_function(x)


# --------------------------------------------------------------------------------------------
# The adapter: margins as scores, checked against predict
# --------------------------------------------------------------------------------------------


def test_binary_margins_are_scores_whose_argmax_is_predict() -> None:
    from sklearn.svm import LinearSVC

    x, y = _rows()
    svc = LinearSVC().fit(x, y)
    m = as_model(svc, bounds=(-1.0, 1.0))
    assert isinstance(m, CallableModel)
    xt = torch.as_tensor(x, dtype=torch.float32)
    s = m.scores(xt)
    assert m.score_kind == "margins" and m.output == "proba" and s.shape == (len(x), 2)
    d = svc.decision_function(x.astype(np.float32))
    np.testing.assert_allclose((s[:, 1] - s[:, 0]).numpy(), d, rtol=1e-4, atol=1e-5)
    assert (s.argmax(1).numpy() == svc.predict(x.astype(np.float32))).all()
    assert any("margins" in n for n in m.notes)
    assert (s.sum(1).abs() < 1e-4).all()  # [-d/2, d/2]: not probabilities


def test_multiclass_margins_and_string_classes() -> None:
    from sklearn.datasets import load_iris
    from sklearn.svm import LinearSVC

    d = load_iris()
    names = np.array(["setosa", "versicolor", "virginica"])[d.target]
    svc = LinearSVC().fit(d.data, names)
    m = as_model(svc, bounds=(0.0, 8.0))
    assert isinstance(m, CallableModel)
    xt = torch.as_tensor(d.data, dtype=torch.float32)
    s = m.scores(xt)
    assert m.score_kind == "margins" and s.shape == (150, 3)
    want = np.searchsorted(svc.classes_, svc.predict(d.data.astype(np.float32)))
    assert (m.predict(xt).numpy() == want).all()


@pytest.mark.parametrize("broken", ["flipped", "ovo"])
def test_margins_that_disagree_with_predict_fall_back_to_labels(broken: str) -> None:
    from sklearn.datasets import load_iris
    from sklearn.svm import SVC, LinearSVC

    if broken == "flipped":
        x, y = _rows()
        est: Any = WrongMargins(LinearSVC().fit(x, y))
    else:  # one-vs-one margins: 3 columns for 3 classes happen, but 6 for 4; use 4 classes
        d = load_iris()
        x = np.vstack([d.data, d.data[:30] + 3.0])
        y = np.concatenate([d.target, np.full(30, 3)])
        est = SVC(decision_function_shape="ovo").fit(x, y)
    m = as_model(est, bounds=(-1.0, 12.0))
    assert isinstance(m, CallableModel) and m.score_kind == "margins"
    labels = m.predict(torch.as_tensor(x, dtype=torch.float32))
    after: str | None = m.score_kind  # read again: the first answer changed it
    assert m.output == "labels" and after == "labels"
    assert (labels.numpy() == np.searchsorted(est.classes_, est.predict(x.astype(np.float32)))).all()
    assert any("were not used as scores" in n for n in m.notes)
    assert not any(n.startswith("The model has no predict_proba") for n in m.notes)


def test_predict_only_estimator_is_label_only() -> None:
    from sklearn.svm import LinearSVC

    x, y = _rows()
    m = as_model(PredictOnly(LinearSVC().fit(x, y)), bounds=(-1.0, 1.0))
    assert isinstance(m, CallableModel) and m.output == "labels" and m.score_kind == "labels"


# --------------------------------------------------------------------------------------------
# End to end
# --------------------------------------------------------------------------------------------


def test_linear_svc_skops_on_csv_gets_tabular_and_blackbox_numbers(tmp_path: Path) -> None:
    """Held-out ``svc_tab``: both sections said "Not run" / failed; now they measure, on margins."""
    import skops.io as sio
    from sklearn.svm import LinearSVC

    x, y = _rows()
    data = tmp_path / "rows.csv"
    _write_csv(data, x, y)
    sio.dump(LinearSVC().fit(x, np.array(["legit", "phish"])[y]), tmp_path / "svc.skops")
    out = tmp_path / "out"
    result = runner.invoke(app, ["--threads", "1", "assess", "--model", str(tmp_path / "svc.skops"),
                                 "--data", str(data), "--label-col", "verdict",
                                 "--sections", "tabular,blackbox", "--out", str(out), *SHORT])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert any("decision_function margins" in n for n in report["model"]["notes"])
    sections = _sections(report)
    tab, bb = sections["tabular"], sections["blackbox"]
    for s in (tab, bb):
        assert not s["metrics"].get("skipped") and not s["metrics"].get("failed"), s["summary"]
        assert s["provenance"]["scores"] == "margins"
    assert bb["metrics"]["square_curve"] and bb["metrics"]["hsj_curve"]
    assert 0.0 <= bb["metrics"]["blackbox_robust_accuracy"] <= bb["metrics"]["clean_accuracy"]
    assert bb["metrics"]["clean_accuracy"] > 0.5  # the margins' argmax is the model's own predict
    assert tab["metrics"]["label_only"] is False and tab["metrics"]["attacked_rows"] > 0
    # every feature inferred mutable on a linear model: three changes evade it
    assert tab["metrics"]["tabular_success_rate"] > 0.0
    assert tab["metrics"]["tabular_valid_rows"] == 1.0


def test_predict_only_model_gets_hopskipjump_and_square_skipped(tmp_path: Path) -> None:
    """A model answering labels only: blackbox runs HopSkipJump, skips Square with the reason;
    the tabular search runs on labels (success = a verified label flip)."""
    from sklearn.svm import LinearSVC

    x, y = _rows()
    svc = LinearSVC().fit(x, y)
    model = as_model(PredictOnly(svc), bounds=(-1.0, 1.0))
    plan = AssessmentPlan(sections=("blackbox", "tabular"), n=30,
                          blackbox=BlackBoxPlan(eps=0.3, budgets=(50,), hsj_budgets=(50,), n=10),
                          tabular=TabularPlan(max_changes=(1, 3)))
    xt, yt = torch.as_tensor(x[:30], dtype=torch.float32), torch.as_tensor(y[:30])
    res = run(model, xt, yt, plan=plan, model_info={"name": "predict-only"}, data_info={"name": "rows"})
    sections = {s.id: s for s in res.sections}
    bb, tab = sections["blackbox"], sections["tabular"]
    assert not bb.metrics.get("skipped") and not bb.metrics.get("failed"), bb.summary
    assert bb.metrics["label_only"] is True and bb.metrics["square_curve"] == []
    assert "labels only" in bb.metrics["square_skipped"] and "Square" in bb.metrics["square_skipped"]
    hsj = bb.metrics["hsj_curve"]
    assert len(hsj) == 1 and hsj[0]["budget"] == 50 and hsj[0]["success_rate"] is not None
    assert hsj[0]["median_l2"] is not None and hsj[0]["median_l2"] > 0
    assert 0.0 <= bb.metrics["blackbox_robust_accuracy"] <= bb.metrics["clean_accuracy"]
    assert any("Square" in f and "not run" in f for f in bb.findings)
    assert bb.provenance["attacks"]["square"]["skipped"]
    assert not tab.metrics.get("skipped") and not tab.metrics.get("failed"), tab.summary
    assert tab.metrics["label_only"] is True and tab.provenance["ranking"] == "labels (one-hot)"
    # one change tried exhaustively: at least what a single-feature evasion of the linear model gives
    assert tab.metrics["attacked_rows"] > 0 and tab.metrics["tabular_success_rate"] > 0.0
    assert tab.metrics["tabular_valid_rows"] == 1.0


def test_label_callable_through_the_cli_gets_blackbox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same through ``--model package.module:function`` answering label names."""
    x, y = _rows()
    data = tmp_path / "rows.csv"
    _write_csv(data, x, y)
    pkg = tmp_path / "userlabels"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "import numpy as np\n"
        "def answer(x):\n"
        "    x = np.asarray(x)\n"
        "    return np.where(x[:, 0] + 0.5 * x[:, 1] > 0, 'phish', 'legit')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "out"
    try:
        result = runner.invoke(app, ["--threads", "1", "assess", "--model", "userlabels:answer",
                                     "--data", str(data), "--label-col", "verdict", "--sections", "blackbox",
                                     "--out", str(out), *SHORT])
    finally:
        sys.modules.pop("userlabels", None)
    assert result.exit_code == 0, result.output
    bb = _sections(json.loads((out / "report.json").read_text()))["blackbox"]
    assert not bb["metrics"].get("skipped") and not bb["metrics"].get("failed"), bb["summary"]
    assert bb["metrics"]["label_only"] is True and bb["metrics"]["hsj_curve"][0]["success_rate"] is not None
    assert "Square" in bb["metrics"]["square_skipped"]


def _spam_corpus(seed: int = 0) -> tuple[list[str], list[str], list[str]]:
    rng = random.Random(seed)
    spam = ["free", "win", "prize", "cash", "claim", "urgent", "winner", "call", "now", "offer", "txt",
            "reply", "bonus", "award"]
    ham = ["meeting", "lunch", "tomorrow", "home", "mum", "later", "dinner", "sorry", "love", "work", "see",
           "you", "ok", "thanks"]
    common = ["the", "a", "to", "and", "i", "is", "it", "for", "on", "my", "your", "at", "this"]

    def msg(words: list[str], k: int) -> str:
        return " ".join(rng.choice(words + common) for _ in range(k))

    texts = [msg(spam, 12) for _ in range(150)] + [msg(ham, 12) for _ in range(150)]
    labels = ["spam"] * 150 + ["ham"] * 150
    test = [msg(spam, 4) + " " + msg(ham, 4) for _ in range(30)]
    return texts, labels, test


def test_text_evasion_with_margins_finds_at_least_labels_only() -> None:
    """Held-out ``svc_text``: labels only 0%, margins 50% on the same points."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline
    from sklearn.svm import LinearSVC

    texts, labels, test = _spam_corpus()
    pipe = make_pipeline(TfidfVectorizer(), LinearSVC()).fit(texts, labels)
    with_margins = TextModel(pipe, class_names=("ham", "spam"))
    labels_only = TextModel(PredictOnly(pipe), class_names=("ham", "spam"))
    y = torch.ones(len(test), dtype=torch.long)
    attack = TextEvasion(method="char", max_word_fraction=0.3, seed=0)
    r_m = attack(with_margins, test, y)
    r_l = attack(labels_only, test, y)
    assert with_margins.score_kind == "margins" and labels_only.score_kind == "labels"
    s = with_margins.scores(test)
    assert (s.argmax(1).numpy() == np.searchsorted(pipe.classes_, pipe.predict(test))).all()
    assert r_m.success_rate >= r_l.success_rate
    assert r_m.success_rate > 0.5  # margins guide the word ranking (measured 0.94 vs 0.50)


def test_margins_read_as_probabilities_are_their_softmax() -> None:
    """A thief or a hardened API asking for probabilities gets softmax(margins): same argmax, in [0, 1]."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline
    from sklearn.svm import LinearSVC

    from modelshield.models import TextAnswers, probabilities

    x, y = _rows()
    m = as_model(LinearSVC().fit(x, y), bounds=(-1.0, 1.0))
    xt = torch.as_tensor(x, dtype=torch.float32)
    p, s = probabilities(m, xt), m.scores(xt)
    assert torch.allclose(p.sum(1), torch.ones(len(x)), atol=1e-5) and bool((p >= 0).all())
    assert torch.equal(p.argmax(1), s.argmax(1))
    texts, labels, test = _spam_corpus()
    pipe = make_pipeline(TfidfVectorizer(), LinearSVC()).fit(texts, labels)
    answers = TextAnswers(pipe, class_names=("ham", "spam"))
    a = answers(test)
    assert answers.score_kind == "margins" and np.allclose(a.sum(1), 1.0) and (a >= 0).all()
    d = pipe.decision_function(test)
    assert np.allclose(a[:, 1], 1.0 / (1.0 + np.exp(-d)), atol=1e-5)  # sigmoid of the binary margin

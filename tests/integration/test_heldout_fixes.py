"""Defects found by the held-out trial of `modelshield assess` on new models (issue #16: #1-3, #7-9, #11).

Each test builds the model and data it needs, and checks the property the defect broke:
black-box callables and estimators are adapted with a class count, label answers are read by
name, the data's labels are encoded in the model's ``classes_`` order (or refused with one line),
the first n test points of class-sorted data hold every class, and text models that answer
labels (or have three classes) are accepted, and probed before any section runs.
"""

from __future__ import annotations

import json
import pickle
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from modelshield.cli.app import app
from modelshield.errors import InputError, ModelCapabilityError
from modelshield.models import CallableModel, TextAnswers, TextModel, as_model, label_indices
from modelshield.targets import TargetOptions, load_target

runner = CliRunner()
N = 40
FAST = ["--n", str(N), "--blackbox-n", "20", "--query-budgets", "100", "--hsj-budgets", "100",
        "--max-changes", "1,3", "--extraction-budgets", "100,300", "--extraction-epochs", "5"]


@pytest.fixture
def user_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder on sys.path for the user's own modules (removed from sys.modules afterwards)."""
    root = tmp_path / "user"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    before = set(sys.modules)
    yield root
    for name in set(sys.modules) - before:
        if name.startswith("heldfix"):
            sys.modules.pop(name, None)


def _rows(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, 4) rows and a 0/1 label that a linear model learns well (label = sign of a weighted sum)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, size=(n, 4))
    y = (x @ np.array([1.0, -0.5, 0.8, 0.2]) > 0).astype(np.int64)
    return x, y


def _write_csv(path: Path, x: np.ndarray, labels: list[str], label_col: str = "verdict") -> None:
    lines = [",".join([*(f"f{j}" for j in range(x.shape[1])), label_col])]
    lines += [",".join([*(f"{v:.6g}" for v in row), lab]) for row, lab in zip(x, labels, strict=True)]
    path.write_text("\n".join(lines) + "\n")


def _load(model: str, data: Path, *, n: int | None = N, **opts: Any) -> Any:
    return load_target(model, data=str(data), data_dir=None, arch=None, n=n,
                       options=TargetOptions(label_col=opts.pop("label_col", "verdict"), **opts))


# --------------------------------------------------------------------------- #1 callables, ONNX


def test_tabular_callable_is_adapted_with_the_data_class_count(tmp_path: Path, user_dir: Path) -> None:
    (user_dir / "heldfix_tab.py").write_text(textwrap.dedent("""
        import numpy as np

        def probs(x):
            s = 1.0 / (1.0 + np.exp(-5.0 * (np.asarray(x) @ np.array([1.0, -0.5, 0.8, 0.2]))))
            return np.stack([1.0 - s, s], axis=1)
    """))
    x, y = _rows()
    _write_csv(tmp_path / "rows.csv", x, ["good" if v else "bad" for v in y])
    target = _load("heldfix_tab:probs", tmp_path / "rows.csv")
    m = target.adapted()
    assert isinstance(m, CallableModel) and m.n_classes == 2  # raised "number of classes is unknown"
    acc = float((m.predict(target.x) == target.y).float().mean())
    assert acc > 0.9  # "bad" (index 0) = the sum < 0 = column 0
    out = tmp_path / "out"
    result = runner.invoke(app, ["--threads", "1", "assess", "--model", "heldfix_tab:probs", "--data",
                                 str(tmp_path / "rows.csv"), "--label-col", "verdict", "--sections",
                                 "blackbox", "--out", str(out), *FAST])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    bb = report["sections"][0]
    assert bb["id"] == "blackbox" and not bb["metrics"].get("skipped")
    assert bb["metrics"]["clean_accuracy"] > 0.9


def test_query_only_onnx_classifier_is_adapted(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    skl2onnx = pytest.importorskip("skl2onnx")
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.ensemble import RandomForestClassifier

    x, y = _rows()
    names = np.array(["legit", "phish"])[y]
    rf = RandomForestClassifier(n_estimators=10, random_state=0).fit(x.astype(np.float32), names)
    onx = skl2onnx.convert_sklearn(rf, initial_types=[("x", FloatTensorType([None, 4]))],
                                   options={id(rf): {"zipmap": False}})
    (tmp_path / "rf.onnx").write_bytes(onx.SerializeToString())
    _write_csv(tmp_path / "rows.csv", x, list(names))
    target = _load(str(tmp_path / "rf.onnx"), tmp_path / "rows.csv")
    assert target.access == "black-box"
    m = target.adapted()
    assert m.n_classes == 2
    expected = np.searchsorted(rf.classes_, rf.predict(target.x.numpy()))
    assert np.array_equal(m.predict(target.x).numpy(), expected)


# --------------------------------------------------------------------------- #2 class names


def test_model_and_data_with_other_label_names_are_refused(tmp_path: Path) -> None:
    skops_io = pytest.importorskip("skops.io")
    from sklearn.linear_model import LogisticRegression

    x, y = _rows()
    lr = LogisticRegression().fit(x, np.array(["legit", "phish"])[y])
    skops_io.dump(lr, tmp_path / "lr.skops")
    _write_csv(tmp_path / "renamed.csv", x, list(np.array(["safe", "bad"])[y]))
    with pytest.raises(InputError, match=r"\['legit', 'phish'\].*\['bad', 'safe'\]"):
        _load(str(tmp_path / "lr.skops"), tmp_path / "renamed.csv")
    out = tmp_path / "out"
    result = runner.invoke(app, ["--threads", "1", "assess", "--model", str(tmp_path / "lr.skops"), "--data",
                                 str(tmp_path / "renamed.csv"), "--label-col", "verdict", "--sections",
                                 "blackbox", "--out", str(out), *FAST])
    assert result.exit_code == 2 and "relabel" in result.output and not out.exists(), result.output
    assert "Traceback" not in result.output


def test_labels_follow_the_model_classes_order_not_the_sorted_names(tmp_path: Path, user_dir: Path) -> None:
    # a model whose classes_ are in reverse sorted order: column 0 is "phish"
    (user_dir / "heldfix_rev.py").write_text(textwrap.dedent("""
        import numpy as np

        class Reversed:
            def __init__(self, est):
                self.est = est
                self.classes_ = np.array(est.classes_[::-1])

            def predict_proba(self, x):
                return np.ascontiguousarray(self.est.predict_proba(x)[:, ::-1])
    """))
    import heldfix_rev  # type: ignore[import-not-found]
    from sklearn.linear_model import LogisticRegression

    x, y = _rows()
    names = np.array(["legit", "phish"])[y]
    est = LogisticRegression().fit(x, names)
    rev = heldfix_rev.Reversed(est)
    with (tmp_path / "rev.pkl").open("wb") as fh:
        pickle.dump(rev, fh)
    _write_csv(tmp_path / "rows.csv", x, list(names))
    with pytest.warns(UserWarning, match="trust_pickle"):
        target = _load(str(tmp_path / "rev.pkl"), tmp_path / "rows.csv", trust_pickle=True)
    assert target.class_names == ("phish", "legit")  # the model's order
    m = target.adapted()
    acc = float((m.predict(target.x) == target.y).float().mean())
    true_acc = float((est.predict(target.x.numpy()) == np.array(target.class_names)[target.y.numpy()]).mean())
    assert acc == pytest.approx(true_acc) and acc > 0.9  # sorted encoding gave 1 - acc


def test_data_with_a_subset_of_the_model_classes_map_by_name(tmp_path: Path) -> None:
    skops_io = pytest.importorskip("skops.io")
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    centres = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 3.0]])
    y3 = rng.integers(0, 3, 600)
    x = centres[y3] + rng.normal(0, 0.4, (600, 2))
    lr = LogisticRegression().fit(x, np.array(["a", "b", "c"])[y3])
    skops_io.dump(lr, tmp_path / "lr3.skops")
    keep = y3 != 1  # the data hold only "a" and "c"
    _write_csv(tmp_path / "ac.csv", x[keep], list(np.array(["a", "b", "c"])[y3[keep]]))
    target = _load(str(tmp_path / "lr3.skops"), tmp_path / "ac.csv")
    assert target.class_names == ("a", "b", "c") and set(target.y.tolist()) == {0, 2}
    m = target.adapted()
    assert m.n_classes == 3
    assert float((m.predict(target.x) == target.y).float().mean()) > 0.95


# --------------------------------------------------------------------------- #3 test order


def test_first_n_test_points_of_class_sorted_data_hold_every_class(tmp_path: Path) -> None:
    from modelshield.data import load_data

    rng = np.random.default_rng(0)
    x = rng.normal(size=(180, 3))
    labels = ["a"] * 60 + ["b"] * 60 + ["c"] * 60  # sorted by class, as sklearn's wine
    _write_csv(tmp_path / "sorted.csv", x, labels)
    data = load_data(tmp_path / "sorted.csv", label_col="verdict")
    assert len(data.y_test) == 54
    for n in (3, 10, 20):
        counts = torch.bincount(data.y_test[:n], minlength=3).tolist()
        assert min(counts) >= n // 3 - 1, (n, counts)  # close to stratified: no class left out
    again = load_data(tmp_path / "sorted.csv", label_col="verdict")
    assert torch.equal(data.y_test, again.y_test) and torch.equal(data.x_test, again.x_test)  # type: ignore[arg-type]
    # the held-out rows are the same as before; only their order changed
    x_test = data.x_test.numpy()  # type: ignore[union-attr]
    order = [int(np.flatnonzero((np.abs(x.astype(np.float32) - r) < 1e-5).all(1))[0]) for r in x_test]
    assert sorted(order) != order and len(set(order)) == len(order)


def test_a_class_sorted_test_folder_is_interleaved(tmp_path: Path, user_dir: Path) -> None:
    from PIL import Image

    (user_dir / "heldfix_img.py").write_text(textwrap.dedent("""
        import numpy as np

        def probs(x):
            m = np.asarray(x).mean(axis=(1, 2, 3))
            return np.stack([1.0 - m, m, np.zeros_like(m)], axis=1)
    """))
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 4), ("test", 12)):
        for c, name in enumerate(("a", "b", "c")):
            (tmp_path / "imgs" / split / name).mkdir(parents=True)
            for i in range(per_class):
                px = rng.integers(0, 255, (6, 6), dtype=np.uint8) // 3 + 80 * c
                folder = tmp_path / "imgs" / split / name
                Image.fromarray(px.astype(np.uint8), mode="L").save(folder / f"{i}.png")
    target = _load("heldfix_img:probs", tmp_path / "imgs", n=6, label_col=None)
    assert sorted(target.y.tolist()) == [0, 0, 1, 1, 2, 2]  # file order gave [0] * 6
    assert "interleaved" in target.data_info["test_order"]
    again = _load("heldfix_img:probs", tmp_path / "imgs", n=6, label_col=None)
    assert torch.equal(target.x, again.x)
    (user_dir / "heldfix_rows.py").write_text(
        "import numpy as np\n\ndef probs(x):\n    return np.full((len(x), 2), 0.5)\n")
    x, y = _rows(60)
    np.savez(tmp_path / "own.npz", x=x, y=y, x_test=x[:30], y_test=y[:30])  # a test split not sorted by class
    own = _load("heldfix_rows:probs", tmp_path / "own.npz", n=10, label_col=None)
    assert own.y.tolist() == y[:10].tolist() and "file order" in own.data_info["test_order"]


def test_builtin_digits_split_is_not_reordered() -> None:
    from modelshield.data import load_data
    from modelshield.data.digits import load_digits

    ours, theirs = load_data("digits"), load_digits(seed=0)
    assert torch.equal(ours.y_test, theirs.y_test) and torch.equal(ours.x_test, theirs.x_test)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- #7, #8 text models


def _texts() -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(0)
    ham = ["see you at lunch", "the meeting moved", "call me when you land", "thanks for the notes"]
    spam = ["win a free prize", "claim your cash now", "free entry win cash", "urgent prize claim"]
    texts = [f"{ham[rng.integers(4)]} {k}" for k in range(60)]
    texts += [f"{spam[rng.integers(4)]} {k}" for k in range(60)]
    return texts, ["ham"] * 60 + ["spam"] * 60


def _write_tsv(path: Path, texts: list[str], labels: list[str]) -> None:
    path.write_text("\n".join(f"{lab}\t{t}" for t, lab in zip(texts, labels, strict=True)) + "\n")


def test_text_callable_answering_label_names_is_accepted(tmp_path: Path, user_dir: Path) -> None:
    (user_dir / "heldfix_text.py").write_text(textwrap.dedent("""
        SPAM = ("free", "win", "cash", "prize", "claim", "urgent")

        def labels(texts):
            return ["spam" if any(w in t.split() for w in SPAM) else "ham" for t in texts]
    """))
    texts, labels = _texts()
    _write_tsv(tmp_path / "sms.tsv", texts, labels)
    target = _load("heldfix_text:labels", tmp_path / "sms.tsv", label_col=None)
    assert target.model_info["output"] == "labels"
    m = target.adapted()
    pred = m.predict(target.x)
    assert float((pred == target.y).float().mean()) == 1.0
    assert m.n_classes == 2


def test_text_pipeline_without_predict_proba_is_accepted(tmp_path: Path) -> None:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline
    from sklearn.svm import LinearSVC

    skops_io = pytest.importorskip("skops.io")
    texts, labels = _texts()
    pipe = make_pipeline(TfidfVectorizer(), LinearSVC()).fit(texts, labels)
    skops_io.dump(pipe, tmp_path / "svc.skops")
    _write_tsv(tmp_path / "sms.tsv", texts, labels)
    target = _load(str(tmp_path / "svc.skops"), tmp_path / "sms.tsv", label_col=None)
    # no predict_proba: its decision_function margins are the scores (issue #16, label-only models)
    assert isinstance(target.module, TextAnswers) and target.model_info["output"] == "proba"
    assert target.module.score_kind == "margins"
    pred = target.adapted().predict(target.x).numpy()
    assert np.array_equal(np.array(target.class_names)[pred], pipe.predict(list(target.texts or ())))


def test_text_model_is_probed_before_any_section(tmp_path: Path, user_dir: Path) -> None:
    (user_dir / "heldfix_bad.py").write_text(textwrap.dedent("""
        import numpy as np

        def answer(texts):
            return np.zeros((len(texts), 2, 2))
    """))
    texts, labels = _texts()
    _write_tsv(tmp_path / "sms.tsv", texts, labels)
    with pytest.raises(ModelCapabilityError, match=r"shape \(2, 2, 2\)"):
        _load("heldfix_bad:answer", tmp_path / "sms.tsv", label_col=None)
    out = tmp_path / "out"
    result = runner.invoke(app, ["--threads", "1", "assess", "--model", "heldfix_bad:answer", "--data",
                                 str(tmp_path / "sms.tsv"), "--out", str(out), *FAST])
    assert result.exit_code == 2 and "shape (2, 2, 2)" in result.output and not out.exists(), result.output


def test_three_class_text_callable_keeps_its_three_classes(tmp_path: Path, user_dir: Path) -> None:
    (user_dir / "heldfix_topic.py").write_text(textwrap.dedent("""
        import numpy as np

        WORDS = {"food": ("pizza", "bread"), "sport": ("goal", "match"), "tech": ("chip", "code")}

        def probs(texts):
            out = [[sum(w in t.split() for w in WORDS[k]) + 0.1 for k in ("food", "sport", "tech")]
                   for t in texts]
            a = np.array(out, dtype=float)
            return a / a.sum(1, keepdims=True)
    """))
    words = {"food": ["pizza", "bread"], "sport": ["goal", "match"], "tech": ["chip", "code"]}
    texts = [f"{words[k][i % 2]} news item {i}" for k in ("food", "sport", "tech") for i in range(30)]
    labels = [k for k in ("food", "sport", "tech") for _ in range(30)]
    _write_tsv(tmp_path / "news.tsv", texts, labels)
    target = _load("heldfix_topic:probs", tmp_path / "news.tsv", label_col=None)
    m = target.adapted()
    assert m.n_classes == 3  # was 2: "y must be class indices in [0, 1]; got 2"
    assert 2 in target.y.tolist() and torch.equal(m.predict(target.x), target.y)


# --------------------------------------------------------------------------- #9 predict-only estimators


@pytest.mark.parametrize("kind", ["linear", "rbf"])
def test_tabular_classifier_without_predict_proba_is_label_only(tmp_path: Path, kind: str) -> None:
    skops_io = pytest.importorskip("skops.io")
    from sklearn.svm import SVC, LinearSVC

    x, y = _rows()
    names = np.array(["legit", "phish"])[y]
    est = (LinearSVC() if kind == "linear" else SVC()).fit(x, names)
    skops_io.dump(est, tmp_path / "svc.skops")
    _write_csv(tmp_path / "rows.csv", x, list(names))
    target = _load(str(tmp_path / "svc.skops"), tmp_path / "rows.csv")
    # no predict_proba: its decision_function margins are the scores (issue #16, label-only models)
    assert target.model_info["output"] == "proba"
    m = target.adapted()
    assert isinstance(m, CallableModel) and m.score_kind == "margins" and m.n_classes == 2
    expected = np.searchsorted(est.classes_, est.predict(target.x.numpy()))
    assert np.array_equal(m.predict(target.x).numpy(), expected)
    assert np.array_equal(m.scores(target.x).argmax(1).numpy(), expected)
    labels_only = as_model(est, output="labels", bounds=target.bounds)
    with pytest.raises(ModelCapabilityError, match="labels only"):
        labels_only.scores(target.x[:2])


# --------------------------------------------------------------------------- adapters


def test_label_indices_reads_names_values_and_refuses_unknown_labels() -> None:
    assert label_indices(np.array(["spam", "ham"]), classes=["ham", "spam"], owner="t").tolist() == [1, 0]
    assert label_indices(np.array([3, 1]), classes=[1, 2, 3], owner="t").tolist() == [2, 0]
    assert label_indices(np.array([1, 0]), classes=None, owner="t").tolist() == [1, 0]
    with pytest.raises(ModelCapabilityError, match=r"'eggs'"):
        label_indices(np.array(["eggs"]), classes=["ham", "spam"], owner="t")
    with pytest.raises(ModelCapabilityError, match="class names are unknown"):
        label_indices(np.array(["spam"]), classes=None, owner="t")
    m = as_model(lambda x: np.where(np.asarray(x)[:, 0] > 0, "spam", "ham"), class_names=["ham", "spam"],
                 n_classes=2)
    assert m.predict(torch.tensor([[0.5], [-0.5]])).tolist() == [1, 0]
    flipped = as_model(lambda x: np.eye(2)[:len(x)][:, ::-1], n_classes=2)  # a negative-stride view
    assert flipped.scores(torch.zeros(2, 1)).tolist() == [[0.0, 1.0], [1.0, 0.0]]


def test_text_model_names_non_finite_rows() -> None:
    def answer(texts: list[str]) -> np.ndarray:
        out = np.full((len(texts), 2), 0.5)
        out[1] = np.nan
        return out

    with pytest.raises(ModelCapabilityError, match=r"NaN or inf in 1 of 3 rows \(first: text 1\)"):
        TextModel(answer).scores(["a", "b", "c"])


def test_a_shape_mismatch_names_the_shape_the_model_declares(tmp_path: Path) -> None:
    """An ONNX image model on data of another shape: the hint is the model's own input shape, not
    the built-in data sets' shapes."""
    import warnings

    import numpy as np
    import torch
    from torch import nn

    from modelshield.errors import InputError
    from modelshield.targets import load_target

    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 30 * 30, 10)).eval()
    model = tmp_path / "c3.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notes
        torch.onnx.export(net, (torch.zeros(1, 3, 32, 32),), str(model), dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "n"}})
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d8.npz", x=rng.random((40, 1, 8, 8)).astype(np.float32), y=np.arange(40) % 10)
    with pytest.raises(InputError, match=r"declares inputs of shape \(3, 32, 32\)") as info:
        load_target(str(model), data=str(tmp_path / "d8.npz"), data_dir=None, arch=None, n=20)
    assert "digits: (1, 8, 8)" not in str(info.value)
